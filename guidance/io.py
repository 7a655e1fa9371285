"""Atomic file writes (a crash mid-write never leaves a truncated checkpoint or result file) and one-writer
folder locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from guidance.errors import GuidanceError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Temp files of this target left by a KILLED writer on this host (SIGKILL skips the cleanup in
    _atomic_write); temps of live writers, and of other hosts sharing the folder, are left alone."""
    host = socket.gethostname()
    for old in path.parent.glob(f".{glob_escape(path.name)}.{glob_escape(host)}-*.tmp"):
        pid = old.name[len(f".{path.name}.{host}-"):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                old.unlink()
            except OSError:
                pass


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write through `write(fileobj)` into a temp file in the same folder, fsync, then rename over `path`.
    The result gets the usual permissions (0666 minus the umask; mkstemp's are 0600)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as e:  # a regular file in the way, a read-only folder, ...
        raise GuidanceError(f"cannot write {path}: {e.strerror or e} ({type(e).__name__}); choose another "
                            "output path") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk, a quota: nothing half-written is left, the old file stands
            raise GuidanceError(f"cannot write {path}: {e.strerror or e} ({type(e).__name__}); the previous "
                                "file, if any, is unchanged: free space or choose another output path") from None
        raise
    return path


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make the output folder `path` now, so a regular file in its way or a read-only parent is one line before
    any work rather than a failed write after it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuidanceError(f"{what}={path} cannot be made a folder: {e.strerror or e} ({type(e).__name__}); choose "
                            "another output path") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise GuidanceError(f"{what}={path} is not writable (permission denied); choose another output path")
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch  # lazy: apps that only write reports should not pay torch's import time

    def write(f):
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's zip writer reports a short write (full disk, file-size limit) so
            if "inline_container" not in str(e) and "write" not in str(e).lower():
                raise
            raise OSError(errno.ENOSPC, f"torch.save stopped writing ({_first_line(e)}): the disk is full or a "
                                        "file-size limit was reached") from None

    return _atomic_write(path, write)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:80]


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_stream(source: BinaryIO, path: str | os.PathLike) -> Path:
    """Copy a readable binary stream (e.g. a gzip file) into `path` atomically."""
    return _atomic_write(path, lambda f: shutil.copyfileobj(source, f))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True, default=_json_default), mode="w")


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return _atomic_write(path, lambda f: f.write(text), mode="w")


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """The bytes of an .npz holding `arrays` (np.savez), so a writer can hash exactly what it writes."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    return atomic_write_bytes(npz_bytes(**arrays), path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


LOCK_NAME = ".writer.lock"


@contextlib.contextmanager
def exclusive_writer(folder: str | os.PathLike, hint: str = "wait for it to finish or write elsewhere"):
    """Hold `folder`'s writer lock (an flock on folder/.writer.lock) for the block: a second writer is refused
    with one line naming the holder (host, pid, since when). The kernel drops an flock when its holder dies, so a
    killed writer's lock is recovered by the next run with nothing to clean up. A filesystem without flock gets a
    warning and no lock (the readers' size + sha256 checks still catch a mixed folder)."""
    path = Path(folder) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, hint)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise GuidanceError(f"cannot lock {path}: {e.strerror or e} ({type(e).__name__}); choose another "
                                "output path") from None
        print(f"warning: {path.parent} cannot be locked here ({e.strerror}); make sure no other run writes it",
              file=sys.stderr)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: a waiting opener of this inode re-checks it (see _lock)
        os.close(fd)


def _lock(path: Path, hint: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that is starting"
            os.close(fd)
            raise GuidanceError(f"{path.parent} is being written by another run ({holder}): {hint}") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder we waited on may have unlinked the file: then lock the new one instead
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd
