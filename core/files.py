"""Files: atomic writes (a reader sees the old file or the new one, never half of either),
content digests, the portable form of a path that records keep and the check that an output folder
can be written before a long computation.

Torch-free so that the integer program, hwsim and tvm_backends can use it too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import SuiteError

# Errors of the file system rather than of the program: reported by name, never as a traceback.
_FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST}

ROOT = Path(__file__).resolve().parent.parent  # the suite's checkout (or install prefix)


def portable_path(path: str | os.PathLike) -> str:
    """`path` as a record should name it: relative to the working folder, or else to the suite's
    checkout, when it lies inside one of them; otherwise as given. Records then read the same on
    every machine (no /home/<user>/... in committed results)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    resolved = p.resolve()
    for base in (Path.cwd().resolve(), ROOT):
        if resolved.is_relative_to(base):
            return resolved.relative_to(base).as_posix()
    return p.as_posix()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it over `path` only if the block succeeds.

    For writers that want a file name (safetensors, matplotlib, torch.save).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _cannot_write(path, err) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and some writers (safetensors) replace the file with a 0600 one of their
        # own: give the result what open() would have, after the writer is done
        tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno not in _FS_ERRNOS:
            raise
        raise _cannot_write(path, err) from None  # a full disk or a read-only folder: said by name
    finally:
        tmp_path.unlink(missing_ok=True)


def _cannot_write(path: Path, err: OSError) -> SuiteError:
    reason = err.strerror or str(err)
    return SuiteError(f"cannot write {path} ({reason}); free space or fix the folder's permissions, or pass "
                      "another output folder (--results, --out)")


def ensure_writable(directory: str | os.PathLike, option: str = "--results") -> Path:
    """Create `directory` if needed and prove that a file can be written in it (a probe file, made
    and removed), so that a command fails at once, not after its computation; a SuiteError naming
    the folder and the option that moves it. Returns the folder."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        what = "result records" if option.startswith("--results") else "its output"
        raise SuiteError(f"cannot write {what} to {d}: the folder cannot be written ({err.strerror or err}); "
                         f"pass a writable folder with {option} or fix its permissions") from None
    return d


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
