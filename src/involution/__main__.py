import sys

from involution.cli import main

sys.exit(main())
