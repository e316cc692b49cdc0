"""``python -m dr``: the command line of :mod:`dr.cli`."""

import sys

if __name__ == "__main__":
    try:
        from dr.cli import main

        code = main()
    except KeyboardInterrupt:  # Ctrl-C while Python was still importing: no command had started
        print("error: interrupted before the command started; nothing was changed", file=sys.stderr)
        code = 130
    sys.exit(code)
