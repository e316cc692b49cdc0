"""The files of a run folder: atomic writes, the folder's lock, what a killed write left behind,
and file-system errors as one line.

- :func:`atomic_write`: write a temporary file next to the target, flush it to disk, rename it over
  the target. Readers see the old file or the new one, never half of one; the new file gets the
  permissions of an ordinary file (``0o666`` less the umask); a write that fails (a full disk) or
  is interrupted (Ctrl-C) leaves the old file and no temporary, and says so in one line.
- :class:`FolderLock`: one process at a time writes a folder. ``FOLDER/.lock`` is held with an
  advisory ``flock``, which the kernel drops when its process dies, so the lock of a killed run is
  stale at once and the next run takes it over; the file names the holder (PID, command, start).
- :func:`remove_stale_temporaries`: the temporaries of writes killed before their rename.
- :class:`OutputError` and :func:`describe`: what went wrong with a file, in words.
- :func:`check_output_folder`, :func:`check_output_file`: an output location checked before a
  command's long work, creating nothing; :func:`created_folder`: a folder a failed command made is
  removed again while empty.
- :func:`json_safe`, :func:`json_text`: strict JSON, a NaN (a statistic that cannot be computed) as ``null``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to an exclusive create (see FolderLock)
    fcntl = None

#: the lock file of a folder
LOCK = ".lock"


class OutputError(ValueError):
    """A file or folder cannot be written; the message names it, says why and what to do."""


class LockedError(OutputError):
    """Another live process holds the folder's lock."""


def describe(error: OSError) -> str:
    """An OS error in words with its symbolic name: ``no space left on device (ENOSPC)``."""
    text = error.strerror or str(error) or type(error).__name__
    name = errno.errorcode.get(error.errno or 0)
    return text[:1].lower() + text[1:] + (f" ({name})" if name else "")


def command_line() -> str:
    """The command this process runs, as typed (``python -m dr train --out ...``)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "dr":
        argv = ["python", "-m", "dr", *argv[1:]]
    return " ".join(argv)[:500]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _hidden_cause(error: BaseException) -> BaseException | None:
    """A Ctrl-C or an OS error behind ``error``: torch's zip writer turns both into a RuntimeError
    ("unexpected pos") raised while handling them."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, (KeyboardInterrupt, OSError)):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def temporary_prefix(name: str) -> str:
    """Temporaries of ``name`` are ``.NAME.XXXXXXXX.tmp`` in the same folder."""
    return f".{name}."


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, flush it to disk, then
    rename it over ``path``. Raises :class:`OutputError` (the old file unchanged) if the file
    system refuses, ``KeyboardInterrupt`` (the old file unchanged) on Ctrl-C."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {describe(error)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; an ordinary file is 0666 less the umask
                os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _hidden_cause(error)
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        if isinstance(cause, OSError):
            kept = "; the file it would replace is unchanged" if path.exists() else ""
            raise OutputError(f"cannot write {path}: {describe(cause)}{kept}") from None
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike, names) -> list[Path]:
    """Delete the temporaries that writes of ``names`` (``checkpoint.pt``, ...) killed before their
    rename left in ``folder``; call it holding the folder's lock. Returns what was removed."""
    removed = []
    for name in names:
        for path in Path(folder).glob(f"{temporary_prefix(name)}*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def prepare_folder(folder: str | os.PathLike, option: str = "--out") -> bool:
    """Make sure ``folder`` is a folder that exists; returns whether it was created here.
    :class:`OutputError` names the folder and the fix (nothing is created then)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, not a folder; choose a folder (the file was not changed)")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {folder}: {parent} is a file, not a folder; choose another {option}")
            break
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
    except OSError as error:
        raise OutputError(
            f"cannot create {option} {folder}: {describe(error)}; choose a folder you can write to"
        ) from None
    return True


def _writable_ancestor(path: Path, option: str, shown: Path) -> None:
    """The nearest existing folder above ``path`` must be a folder this process can write to."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {shown}: {parent} is a file, not a folder; choose another {option}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(
                    f"cannot create {option} {shown}: {parent} is not writable; choose a folder you can write to"
                )
            return


def check_output_folder(folder: str | os.PathLike, option: str = "--out") -> None:
    """Raise :class:`OutputError` (naming ``folder`` and the fix) unless ``folder`` is a writable
    folder or can be created; creates nothing. A command calls it before its long work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, not a folder; choose a folder (the file was not changed)")
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {folder} is not writable; choose a folder you can write to")
        return
    _writable_ancestor(folder, option, folder)


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Raise :class:`OutputError` (naming ``path`` and the fix) unless a file can be written at
    ``path`` (replacing the one there, if any); creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder, not a file; name a file instead (the folder was not changed)")
    if path.exists():
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot replace {option} {path}: its folder is not writable; choose another {option}")
        return
    _writable_ancestor(path, option, path)


@contextlib.contextmanager
def created_folder(folder: str | os.PathLike, option: str = "--out"):
    """:func:`prepare_folder` for the block; if the block fails, the folders made here are removed
    again while they are empty, so a command that fails before writing leaves nothing behind (a
    folder that was there before, or holds a file, is kept)."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    prepare_folder(folder, option)
    try:
        yield folder
    except BaseException:
        for made in missing:
            try:
                made.rmdir()  # only an empty folder
            except OSError:
                break
        raise


def json_safe(value):
    """``value`` with every NaN or infinite float (numpy's included) replaced by ``None``: JSON has
    no NaN, and a statistic that cannot be computed is reported as ``null``, not as a number."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):  # numpy's float64 is a float
        return None
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and value.dtype.kind == "f":
        return None if not math.isfinite(float(value)) else float(value)
    return value


def json_text(value, indent: int | None = 2) -> str:
    """``value`` as strict JSON (:func:`json_safe`: no NaN or Infinity)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


class FolderLock:
    """The lock of a folder (``FOLDER/.lock``): one process at a time writes the folder.

    ``acquire()`` returns False while another live process holds it. The lock is a ``flock`` on the
    file, which the kernel drops when the holder dies, so a killed run's lock is taken over by the
    next one (:attr:`stale_holder` then says whose it was). A process that already holds a folder's
    lock acquires it again without waiting (the study holds its runs' folders while it trains them).
    Without ``fcntl`` (Windows) the lock is an exclusive create; a stale one must be deleted by hand.
    """

    _held: dict[Path, FolderLock] = {}  # locks this process holds, by folder

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.stale_holder: dict | None = None  # the record of a dead holder this lock replaced
        self._fd: int | None = None
        self._nested = False

    def holder(self) -> dict:
        """What the lock file says about its holder (``pid``, ``command``, ``started``, ``host``)."""
        try:
            record = json.loads(self.path.read_text())
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def describe_holder(self) -> str:
        h = self.holder()
        if not h:
            return "another process"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
        return f"process {h.get('pid')} on {h.get('host')} ({h.get('command')}, started {started})"

    def acquire(self) -> bool:
        """Take the lock; False while another live process holds it. :class:`OutputError` if the
        lock file cannot be written (a read-only folder)."""
        key = self.folder.resolve()
        if key in FolderLock._held:
            self._nested = True
            return True
        try:
            return self._acquire_by_create(key) if fcntl is None else self._acquire_by_flock(key)
        except OSError as error:
            raise OutputError(
                f"cannot write to {self.folder} (its lock {self.path}): {describe(error)}; choose a folder you can "
                "write to"
            ) from None

    def _acquire_by_flock(self, key: Path) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as error:  # a file system without locks (some network mounts): go on unlocked
                print(
                    f"warning: cannot lock {self.path} ({describe(error)}); a second run there would not be noticed",
                    file=sys.stderr,
                )
                break
            try:  # the last holder may have deleted the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.stale_holder = self.holder() or None
        self._fd = fd
        self._write_record(fd)
        FolderLock._held[key] = self
        return True

    def _acquire_by_create(self, key: Path) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        self._fd = fd
        self._write_record(fd)
        FolderLock._held[key] = self
        return True

    def _write_record(self, fd: int) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())

    def release(self) -> None:
        if self._nested or self._fd is None:
            return
        FolderLock._held.pop(self.folder.resolve(), None)
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still holding it: a waiting process re-checks the file (acquire)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        if not self.acquire():
            raise LockedError(
                f"{self.folder} is being written by another run: its lock {self.path} is held by "
                f"{self.describe_holder()}; wait for it to finish or choose another --out"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()
