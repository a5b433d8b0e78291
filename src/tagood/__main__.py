"""``python -m tagood ...``: the ``tagood`` command, also under ``torchrun ... -m tagood extract|bench|fit ...``."""

from tagood.cli.main import main

if __name__ == "__main__":
    main()
