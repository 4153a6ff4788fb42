"""Key files in the data directory: created atomically with their final mode, read only if nobody else can
touch them. Shared by the camera-credential keys (:mod:`edge.credentials`) and the device identity
(:mod:`edge.identity`).

Each file is written under a unique temporary name opened with ``O_CREAT | O_EXCL`` and its final mode (never
readable by others, not even briefly), fsynced, renamed into place, and then the directory is fsynced.
Creation holds an exclusive ``flock`` on a lock file, so concurrent first starts end with one key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from edge.errors import Error
from edge.fsutil import fsync_dir

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def write_atomically(path: Path, data: bytes, mode: int, error: type[Error] = Error) -> None:
    """Write ``data`` to a fresh temporary file created with ``mode``, fsync, rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # exact, whatever the umask took away; O_CREAT already never gave more
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise error(f"cannot write {path}: {e.strerror}") from None


@contextlib.contextmanager
def creation_lock(data_dir: Path, lock_name: str, error: type[Error] = Error) -> Iterator[None]:
    """Hold ``data_dir/lock_name`` exclusively; temporary files of an interrupted write are removed."""
    path = data_dir / lock_name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PUBLIC_MODE)
    except OSError as e:
        raise error(f"cannot open {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        stem = lock_name.rsplit(".", 1)[0]
        for stale in data_dir.glob(f".{stem}.*.tmp"):  # left by a crash mid-write; we hold the lock
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_key_file(path: Path, *, private: bool, size: int, what: str, error: type[Error] = Error) -> bytes:
    """Read a raw ``size``-byte key. Refuse a private key group or others may access, and a public key they
    may change (whoever can swap a public key receives what is sealed to it, or is trusted as us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if private and mode & 0o077:
            raise error(
                f"refusing private key {path}: mode {mode:04o} lets group or others access it (chmod 600 it)"
            )
        if not private and mode & 0o022:
            raise error(
                f"refusing public key {path}: mode {mode:04o} lets group or others change it (chmod 644 it)"
            )
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(data) != size:
        raise error(f"{path} is not a raw {size}-byte {what}")
    return data


def prepare_dir(data_dir: Path, error: type[Error] = Error) -> Path:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create data directory {data_dir}: {e.strerror}") from None
    return data_dir
