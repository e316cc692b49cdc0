"""What a run records about itself: ``config.json``, written when the run starts.

It holds the model and training configurations in full (every option, the defaults included, and
what the ``None`` defaults resolved to), the static route, and one entry per session (the first
start and each ``--resume``): the iteration it started from, the number of processes (several under
``torchrun``, each with its share of the batch), the command, the Python, PyTorch,
torchvision and NumPy versions, the platform, the device, the number of threads and the git commit
of the ``dr`` checkout (``None`` where there is no git or no repository).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy
import torch
import torchvision

import dr
from dr.data import data_design
from dr.model import DynamicRoutingNet
from dr.routes import Route
from dr.training.config import TrainConfig
from dr.training.files import OutputError, atomic_write, command_line

FORMAT = "dr-run-config"
#: the folder that holds the ``dr`` package (a git checkout, unless dr was installed as a copy)
PACKAGE_ROOT = Path(dr.__file__).resolve().parent.parent


def git_commit(root: str | os.PathLike = PACKAGE_ROOT) -> dict | None:
    """``{"commit": SHA, "dirty": bool}`` of the repository whose top folder is ``root``; ``None``
    without git, outside a repository, or when ``root`` is only somewhere inside another one (dr
    installed as a copy into a virtual environment that sits in some checkout)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read only: git status must not lock the index
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
        )
        if head.returncode != 0:
            return None
        top, commit = head.stdout.splitlines()[:2]
        if Path(top).resolve() != Path(root).resolve():
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def environment(device: torch.device) -> dict:
    """Versions, platform, device and threads of this process."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run_config(
    cfg: TrainConfig,
    model: DynamicRoutingNet,
    route: Route | None,
    crop,
    *,
    device,
    start: int,
    previous=None,
    processes: int = 1,
) -> dict:
    """The content of ``config.json``; ``previous`` is the file's earlier content (a resumed run);
    ``processes``: how many train together (torchrun), ``device`` being process 0's."""
    sessions = list(previous.get("sessions", [])) if isinstance(previous, dict) else []
    sessions.append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "start_iteration": start,
            "processes": processes,
            "command": command_line(),
            **environment(torch.device(device)),
            "git": git_commit(),
        }
    )
    return {
        "format": FORMAT,
        "train_config": cfg.to_dict(),
        "model_config": model.config.to_dict(),
        "resolved": {"crop": list(crop), "warmup_iters": cfg.warmup_iters, "small_gate": model.config.small_gate},
        "route": None if route is None else route.to_record(),
        "data_design": data_design(cfg.data),  # dr.data.data_design: what a resumed run must draw again
        "sessions": sessions,
    }


def write_run_config(
    path, cfg: TrainConfig, model, route, crop, *, device, start: int, processes: int = 1, keep: bool = False
) -> dict:
    """Write ``config.json``, or, with ``keep`` (a resumed run), extend its list of sessions;
    returns what was written. A history that cannot be read is never replaced: :class:`OutputError`."""
    path = Path(path)
    try:
        previous = json.loads(path.read_text()) if keep and path.is_file() else None
    except (OSError, ValueError) as error:
        raise OutputError(
            f"{path} cannot be read ({error}); it holds the run's history: repair it or move it aside"
        ) from None
    record = run_config(cfg, model, route, crop, device=device, start=start, previous=previous, processes=processes)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return record
