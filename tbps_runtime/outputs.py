"""Guards for the files a command writes: one writer per output, never over an input, room on the disk.

- :func:`output_lock`: an OS file lock (``flock``) on ``.NAME.lock`` beside an
  output, held for a whole run, so two runs writing the same output (two
  ``tbps index -o g.npy``) cannot share its partial state: the second is
  refused with the first one's pid. The kernel drops the lock when its process
  dies, so a crashed run never blocks the next one.
- :func:`check_outputs`: refuse an output that is one of the command's own
  inputs (``--show`` pointed at the gallery being ranked), or that another
  output of the same command also names.
- :func:`ensure_space` and :func:`reserve`: refuse a file that cannot fit on
  its disk before writing it, and allocate a memory-mapped file's blocks up
  front, so a full disk is an error message instead of a ``SIGBUS``;
  :func:`disk_errors` turns a late ENOSPC into the same message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from tbps_runtime.atomic import parse_json
from tbps_runtime.errors import OutputError

logger = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_held: dict[str, list] = {}  # lock path -> [owning thread id, depth, file descriptor]: this process's locks
_held_guard = threading.Lock()


def lock_path(output: str | Path) -> Path:
    """The lock file of ``output``: ``.NAME.lock`` beside it."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def output_lock(output: str | Path, what: str = "writing") -> Iterator[None]:
    """Hold the lock of ``output`` for the block; re-entrant within one thread.

    Raises:
        OutputError: another process (named by its pid), or another thread of this
            one, holds it; nothing is written then.
    """
    path = lock_path(output)
    key = os.path.realpath(path)
    with _held_guard:
        held = _held.get(key)
        if held is not None and held[0] != threading.get_ident():
            raise OutputError(f"another thread of this process is {what} {output}: wait for it to finish, "
                              "or write to another output")
        if held is not None:
            held[1] += 1
        else:
            _held[key] = [threading.get_ident(), 1, _acquire(path, output, what)]
    try:
        yield
    finally:
        with _held_guard:
            held = _held[key]
            held[1] -= 1
            if held[1] == 0:
                del _held[key]
                _release(path, held[2])


def _acquire(path: Path, output: str | Path, what: str) -> int:
    """Open and ``flock`` the lock file, making sure it is still the one at ``path`` (a finishing run
    unlinks it while holding it); note this process in it. Returns the descriptor."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no OS lock to take
        logger.debug("no fcntl on this platform: %s is not locked", output)
        return -1
    if not path.parent.is_dir():
        blocker = next((p for p in Path(output).absolute().parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise OutputError(f"cannot write {output}: {blocker} is a file, not a directory; choose another path")
        raise OutputError(f"the directory of {output} does not exist: create it first")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write beside {output} ({e.strerror}): pick a directory you can write "
                              "to") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"another tbps run ({holder}) is {what} {output}: wait for it to finish, or "
                              "write to another output") from None
        except OSError as e:  # a file system without locks (some network mounts): run, but say so
            logger.warning("cannot lock %s (%s): another run writing it at the same time would not be noticed",
                           path, e.strerror)
            return fd
        try:
            on_disk, opened = os.stat(path), os.fstat(fd)
            same = (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file as we opened it: take the new one
    _note_holder(fd)
    return fd


def _release(path: Path, fd: int) -> None:
    if fd < 0:
        return
    path.unlink(missing_ok=True)  # while still held: a waiting opener then sees another inode and retries
    os.close(fd)


def _note_holder(fd: int) -> None:
    """Write this process's pid and command into the lock file (best effort: a full disk keeps it empty)."""
    note = json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode("utf-8", "replace"), 0)
    except OSError:
        pass


def _holder(fd: int) -> str:
    """``pid 1234, since 2026-01-02 03:04:05`` from a lock file another process holds
    (which also names its command, for people who look)."""
    try:
        note = parse_json(os.pread(fd, 4096, 0))
        return f"pid {int(note['pid'])}, since {note['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


# ---- outputs that are inputs ----------------------------------------------------------

def check_outputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, Iterable[str | Path]]) -> None:
    """Refuse an output that is an input of the same command, or that two outputs share.

    Args:
        outputs: what the command will write, by the option that names it (``{"--show": "r.png"}``);
            None for an output not asked for.
        inputs: what the command reads, by what it is (``{"the gallery (--gallery)": [g.npy, g.json]}``).
            Compared as files (device and inode), so links and other spellings of a path count.

    Raises:
        OutputError: naming the output, the input and the fix.
    """
    named = {label: Path(path) for label, path in outputs.items() if path is not None}
    seen: dict[str, str] = {}
    for label, path in named.items():
        real = os.path.realpath(path)
        if real in seen:
            raise OutputError(f"{label} {path} is also the file of {seen[real]}: one would overwrite the other; "
                              "give them different names")
        seen[real] = label
    existing = {_identity(path): (label, path) for label, path in named.items() if _identity(path) is not None}
    if not existing:  # an input exists: an output that does not cannot be one
        return
    for what, paths in inputs.items():
        for path in paths:
            hit = existing.get(_identity(Path(path)))
            if hit is not None:
                where = "" if str(path) == str(hit[1]) else f" ({path})"
                raise OutputError(f"{hit[0]} {hit[1]} would overwrite {what}{where}, which this command reads: "
                                  "write to another file")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    return stat.st_dev, stat.st_ino


# ---- a full disk ----------------------------------------------------------------------

def ensure_space(directory: str | Path, needed: int, what: str) -> None:
    """Refuse to write ``needed`` more bytes into ``directory`` when its disk has less free.

    Raises:
        OutputError: not enough free space (how much is needed and free).
    """
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise OutputError(f"not enough free disk space for {what}: it needs {_size(needed)}, "
                          f"{directory} has {_size(free)} free; free some space or write elsewhere")


def reserve(path: str | Path, size: int, what: str) -> None:
    """Allocate the disk blocks of ``path``'s first ``size`` bytes (a sparse memory-mapped file),
    so writing through the map cannot meet a full disk (which would be a ``SIGBUS``).

    Raises:
        OutputError: the disk is full.
    """
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise OutputError(f"not enough free disk space for {what} ({_size(size)}) in "
                              f"{Path(path).parent}: free some space or write elsewhere") from e
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def unallocated_bytes(path: str | Path) -> int:
    """Bytes of ``path`` not yet backed by disk blocks (a sparse file's holes), 0 if it is missing."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0
    blocks = getattr(stat, "st_blocks", None)
    return stat.st_size if blocks is None else max(0, stat.st_size - 512 * blocks)


def os_error_of(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: itself, or the first one in its ``__cause__``/``__context__`` chain
    (a library that wraps a failed write, as torch's zip writer does); None if there is none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def is_disk_full(error: OSError) -> bool:
    """Whether ``error`` says the disk (or the quota) is full: ENOSPC, EDQUOT."""
    return error.errno in _DISK_FULL


@contextlib.contextmanager
def disk_errors(output: str | Path, resumable: bool = False) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) met while writing ``output`` into an :class:`OutputError`."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        again = ("run the same command again to resume" if resumable else "run it again")
        raise OutputError(f"the disk of {output} is full ({e.strerror}): free some space, then {again}") from e


def _size(nbytes: float) -> str:
    if nbytes < 1024:
        return f"{int(nbytes)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "TiB":
            break
    return f"{nbytes:.1f} {unit}"


def check_writable(output: str | Path, what: str = "the output") -> None:
    """Refuse an output that cannot be written, before the work that produces it: a directory
    where a file is wanted, a path under a regular file (``m.pt/x.bundle``), a directory
    this process may not write. Creates and removes a temp file in the nearest existing
    directory (what matters is whether this process can, whatever ``os.access`` says).

    Raises:
        OutputError: naming ``output`` and what stops it.
    """
    path = Path(output).absolute()
    if path.is_dir():
        raise OutputError(f"{what} {output} is a directory: give a file name")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {what} {output}: {ancestor} is a file, not a directory; choose another path")
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".tbps-write-check-"):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {what} {output}: {ancestor} is not writable ({e.strerror}); "
                          "choose another path or fix its permissions") from e


@contextlib.contextmanager
def staging_directory(output: str | Path) -> Iterator[Path]:
    """A temp directory beside ``output`` (same file system, for :func:`replace_directory`), removed on
    exit unless it was renamed into place."""
    output = Path(output)
    path = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish_permissions(directory: str | Path) -> None:
    """Temp files and directories are created private (0600/0700): give the tree under ``directory`` the
    permissions the user's umask gives any new file or directory."""
    umask = os.umask(0)
    os.umask(umask)
    directory = Path(directory)
    for path in (directory, *directory.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def replace_directory(staging: str | Path, output: str | Path) -> None:
    """Rename the finished directory ``staging`` to ``output`` (same file system). An existing ``output`` is
    first moved aside, restored if the rename fails, and removed only once the new one is in place: a
    reader sees the old directory or the new one, never neither half-way."""
    staging, output = Path(staging), Path(output)
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old / output.name)
    try:
        os.replace(staging, output)
    except OSError:
        if old is not None:
            os.replace(old / output.name, output)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
