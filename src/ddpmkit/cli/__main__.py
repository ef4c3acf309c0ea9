"""``python -m ddpmkit.cli`` (what torchrun starts): the ``ddpm`` command."""

import sys

from ddpmkit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
