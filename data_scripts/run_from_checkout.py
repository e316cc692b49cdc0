"""Run ``python -m dr ARGS`` with the ``dr`` package of another checkout (a ``git worktree`` at a
fixed commit), from this project's virtual environment:

    .venv/bin/python data_scripts/run_from_checkout.py /path/to/worktree study --out /path/to/out ...

The environment's editable install maps ``dr`` to the checkout it was installed from, ahead of
``PYTHONPATH``; this drops that mapping for the process, so a long study trains and records the
commit of the worktree, not whatever the working tree holds while it runs (docs/decomposition.md).
"""

import runpy
import sys
from pathlib import Path

if len(sys.argv) < 2 or not (Path(sys.argv[1]) / "dr" / "__init__.py").is_file():
    sys.exit("usage: run_from_checkout.py CHECKOUT ARGS...  (CHECKOUT: a folder holding the dr package)")
checkout = str(Path(sys.argv.pop(1)).resolve())
if "--jobs" in sys.argv and sys.argv[sys.argv.index("--jobs") + 1 :][:1] != ["1"]:
    # study --jobs N starts its workers as `python -m dr`, which would import the working tree's dr
    sys.exit("run_from_checkout.py: give --jobs 1 (the default) and start one process per core instead")
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in f"{f!r} {getattr(f, '__module__', '')}".lower()]
sys.path.insert(0, checkout)
sys.argv[0] = "dr"
runpy.run_module("dr", run_name="__main__", alter_sys=True)
