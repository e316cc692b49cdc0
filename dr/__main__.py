"""``python -m dr``: the command line of :mod:`dr.cli`."""

import sys

from dr.cli import main

if __name__ == "__main__":
    sys.exit(main())
