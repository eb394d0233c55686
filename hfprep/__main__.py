"""``python -m hfprep``: the same command line as the ``hfprep`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
