"""``python -m dr``: the command line of :mod:`dr.cli`."""

import signal
import sys

from dr.allocator import keep_freed_memory

STARTING = "error: interrupted before the command started; nothing was changed"


def _import_main():
    """``dr.cli.main``, imported with Ctrl-C held back until the import is over.

    A KeyboardInterrupt raised in the middle of importing torch does not always stop Python: torch's
    C code imports numpy and drops the error when that import fails, so numpy is left half-imported
    (``module 'numpy' has no attribute 'logical_or'`` later) and the command carries on, or ends by
    the signal instead of with 130. Held back, the signal only sets a flag; it is answered once
    every module is whole. Returns None when Ctrl-C came while importing. Where SIGINT is ignored
    (a parent ignored it), it stays ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        from dr.cli import main

        return main
    pressed = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from dr.cli import main
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return None if pressed else main


def run() -> int:
    """The command line, as `python -m dr` and the `dr` script run it; returns the exit status."""
    try:
        keep_freed_memory()  # before torch allocates anything (dr.allocator)
        main = _import_main()
        if main is not None:
            return main()
    except KeyboardInterrupt:  # after the import, before the command answers Ctrl-C itself
        pass
    print(STARTING, file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(run())
