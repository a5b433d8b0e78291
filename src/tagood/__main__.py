"""``python -m tagood ...``: the ``tagood`` command, also under ``torchrun ... -m tagood extract|bench|fit ...``."""

import sys

from tagood.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
