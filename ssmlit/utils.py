"""Small shared helpers: atomic file writes, staging folders, the current run directory.

Everything ssmlit writes goes through a temporary name that is renamed into place when complete,
so an interrupted write never leaves a half-written file or folder under the final name. Final
files and folders get the permissions the process umask gives ordinary ones (``mkstemp`` alone
would make them 0600, readable by their owner only, which breaks shared caches and run folders).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: staging folders are not cleaned up automatically
    fcntl = None

_UMASK_LOCK = threading.Lock()


def process_umask() -> int:
    """The process umask (reading it means setting it; it is restored at once)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits an ordinary new file gets under the current umask (0o644 under 022)."""
    return 0o666 & ~process_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic
    rename, so an interrupted write never leaves a half-written file behind. The file gets the
    umask's ordinary permissions, not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# -- staging folders -------------------------------------------------------------------------------
class StagingDir:
    """A hidden folder ``<parent>/<prefix><random>`` that is filled and then renamed into place.

    While its owner lives, an exclusive ``flock`` is held on the sibling file ``<folder>.lock``;
    :func:`remove_stale_staging` deletes staging folders whose lock nobody holds any more (left by
    a killed process), and leaves live ones (another process building the same thing) alone. The
    folder is made with ``os.mkdir``, so it gets the umask's ordinary permissions.

    Args:
        parent: where the folder is made (the final folder's parent, so the rename stays on one
            file system).
        prefix: name prefix, e.g. ``".mnist-0123abcd.tmp-"``.
        discard_at_exit: remove the folder when the interpreter exits without :meth:`commit`.
    """

    def __init__(self, parent: str | os.PathLike, prefix: str, discard_at_exit: bool = False) -> None:
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = parent / f"{prefix}{secrets.token_hex(4)}"
            lock = path.with_name(path.name + ".lock")
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 100 collisions of 32 random bits
            raise FileExistsError(f"cannot create a staging folder in {parent}")
        self._lock_fd: int | None = fd
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        self.path, self.lock = path, lock
        try:
            os.mkdir(path)
        except BaseException:
            self._release()
            raise
        self._done = False
        if discard_at_exit:
            atexit.register(self.discard)

    def _release(self) -> None:
        self.lock.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def commit(self, final: str | os.PathLike, replace: bool = True) -> Path:
        """Rename the folder to ``final``. With ``replace``, an existing ``final`` is first moved
        aside and deleted afterwards, so ``final`` holds either the old or the new set, never a
        mix. Without it, an existing ``final`` raises ``FileExistsError``."""
        final = Path(final)
        old = None
        if final.exists() or final.is_symlink():
            if not replace:
                raise FileExistsError(f"{final} already exists")
            old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
            os.replace(final, old)
        os.replace(self.path, final)
        self._done = True
        self._release()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        return final

    def discard(self) -> None:
        """Delete the folder (no-op after :meth:`commit`)."""
        if not self._done:
            self._done = True
            shutil.rmtree(self.path, ignore_errors=True)
            self._release()


def remove_stale_staging(parent: str | os.PathLike, pattern: str) -> list[Path]:
    """Delete staging folders matching the glob ``pattern`` in ``parent`` that no live process
    holds (see :class:`StagingDir`); folders without a lock file predate the locking and are stale
    too. Returns the folders removed. Without ``fcntl`` (Windows) nothing is removed."""
    parent = Path(parent)
    if fcntl is None or not parent.is_dir():
        return []
    removed = []
    for folder in sorted(parent.glob(pattern)):
        if not folder.is_dir() or folder.name.endswith(".lock"):
            continue
        lock = folder.with_name(folder.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        continue  # its owner is alive
                    raise
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(folder)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def check_writable(folder: str | os.PathLike) -> None:
    """Raise ``PermissionError`` (or another ``OSError``) if files cannot be created in ``folder``
    (created when missing), by creating and deleting a probe file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def run_dir() -> Path:
    """The Hydra run directory when running under Hydra, else the working directory."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return Path.cwd()


def config_dir() -> Path:
    """The Hydra config folder: ``ssmlit/conf`` in an installed wheel (``setup.py`` maps the
    repository's top-level ``conf/`` there), else ``conf/`` next to the package in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"ssmlit's Hydra configs are missing: looked for {here / 'conf'} and "
                            f"{here.parent / 'conf'}")
