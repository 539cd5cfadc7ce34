import sys

import involution_cli

sys.exit(involution_cli.main())
