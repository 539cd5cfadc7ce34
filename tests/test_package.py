"""The package's surface: what `import involution` needs and loads."""

import os
import subprocess
import sys
import textwrap

import keras

# Run in a fresh interpreter where the app's dependencies cannot be imported.
SCRIPT = textwrap.dedent("""
    import sys
    for name in ("matplotlib", "PIL", "tqdm"):
        sys.modules[name] = None
    import numpy as np
    import involution
    from involution import models
    layer = involution.Involution(channel=8, group_number=2, kernel_size=3)
    assert tuple(layer(np.zeros((1, 6, 6, 8), "float32")).shape) == (1, 6, 6, 8)
    assert models.create_model("invnet").count_params() == 81_616
    loaded = sorted(m for m in sys.modules if m.startswith("involution."))
    assert not [m for m in loaded if m.startswith("involution.app")], loaded
    print("ok")
""")


def test_the_library_needs_neither_the_app_nor_its_dependencies():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
