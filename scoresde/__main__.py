"""``python -m scoresde``: the command line (the same as the ``scoresde`` command)."""

import sys

from scoresde.cli import main

if __name__ == "__main__":
    sys.exit(main())
