"""Download, verification, safe extraction, raw-file search and the preprocessed-data cache.

Every task data module goes through this one module:

1. **Search** (:func:`find_paths`): raw files are located by a breadth-first search beneath
   ``data_dir`` instead of one hard-coded layout, because the same archive is unpacked with
   different nestings by different codebases (the LRA release nests ``lra_release/lra_release/``).
   Heavy leaf folders (``imgs``: millions of Pathfinder PNGs) and hidden folders are not descended.
2. **Download** (:func:`download_file`): streamed into ``<name>.part`` with a progress bar, resumed
   with an HTTP ``Range`` request when a partial file exists, verified (size, MD5) and only then
   renamed to its final name, so a file with the final name is always complete.
3. **Extraction** (:func:`safe_extract`): tar (any compression) or zip, into a temporary folder
   next to the target that is renamed into place when complete. Members that would land outside
   the target (absolute paths, ``..``) and device/FIFO members are rejected; tar links are allowed
   when their targets stay inside the extraction folder (hard links become copies), others are
   rejected, as are zip symlinks; a truncated or corrupt archive raises :class:`ArchiveError`
   naming the file.
4. **Cache** (:func:`build_cache`): each task preprocesses once into
   ``<cache_root>/<task>-<hash of the preprocessing parameters>/`` (compact NumPy ``.npy`` arrays
   loaded with ``mmap_mode="r"``, plus ``meta.json``). The folder is written under a temporary name
   and renamed when complete; ``meta.json`` is written last, so its presence marks a finished cache.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import itertools
import json
import logging
import lzma
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ssmlit.errors import UserError
from ssmlit.utils import StagingDir, atomic_write_text, remove_stale_staging

log = logging.getLogger(__name__)

CACHE_META = "meta.json"
# Folders never descended while searching for raw files: Pathfinder image folders hold ~200k PNGs
# each, and Speech Commands' noise folder is unused.
SKIP_DIRS = frozenset({"imgs", "__pycache__", "_background_noise_"})


# -- errors ---------------------------------------------------------------------------------------
class DataError(UserError, RuntimeError):
    """Base class of data preparation errors (user errors: reported as one message, exit code 2)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Raw data missing and not downloadable; the message names files, source URL and location."""


class DownloadError(DataError):
    """Every URL of a source failed (no network, HTTP error)."""


class ChecksumError(DataError):
    """A file's size or MD5 differs from the published one."""


class ArchiveError(DataError):
    """An archive is corrupt or truncated."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would escape the target folder, links outside it, or is a device."""


# -- sources --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One downloadable file.

    Attributes:
        urls: the canonical URL first, then mirrors tried in order.
        filename: local file name.
        md5: published MD5 hex digest, if known.
        size: published size in bytes, if known.
        extract_to: folder (relative to ``data_dir``) the archive is extracted into; ``None`` keeps
            the file as it is (e.g. MNIST's ``.gz`` idx files, read compressed).
        store_in: folder (relative to ``data_dir``) the downloaded file is kept in.
    """

    urls: tuple[str, ...]
    filename: str
    md5: str | None = None
    size: int | None = None
    extract_to: str | None = ""
    store_in: str = "downloads"

    @property
    def url(self) -> str:
        return self.urls[0]


def describe_sources(sources: Sequence[Source]) -> list[str]:
    """One human-readable line per source (URL, mirrors, MD5)."""
    lines = []
    for s in sources:
        extra = [f"md5 {s.md5}"] if s.md5 else []
        extra += [f"mirror {u}" for u in s.urls[1:]]
        lines.append(s.url + (f" ({'; '.join(extra)})" if extra else ""))
    return lines


def missing_data_message(
    task: str, expected: Sequence[str], sources: Sequence[Source], data_dir: Path, reason: str | None = None
) -> str:
    """The error text for missing raw data: what is expected, where it comes from, where to put it."""
    root = Path(data_dir).resolve()
    lines = [f"{task}: raw data not found beneath {root}.",
             "Expected files (searched for anywhere beneath that folder):"]
    lines += [f"  {e}" for e in expected]
    lines += ["Source:"] + [f"  {d}" for d in describe_sources(sources)]
    extract = [s for s in sources if s.extract_to is not None]
    if extract:
        lines.append(f"Download the archive and extract it beneath {root} "
                     f"(e.g. `tar xf {extract[0].filename} -C {root / extract[0].extract_to}`),")
    else:
        lines.append(f"Download the files into {root / sources[0].store_in} (they may stay gzipped),")
    lines.append("or point task.data_dir (or $SSMLIT_DATA) at the folder that holds them; with "
                 "task.download=true they are fetched automatically.")
    if reason:
        lines.append(f"Automatic download failed: {reason}")
    return "\n".join(lines)


# -- search ---------------------------------------------------------------------------------------
def find_paths(
    root: str | os.PathLike, pattern: str, kind: str = "file", max_depth: int = 6,
    skip: frozenset[str] = SKIP_DIRS,
) -> list[Path]:
    """Paths whose name matches the glob ``pattern`` beneath ``root``, shallowest first.

    Breadth-first with ``os.scandir`` down to ``max_depth`` levels; hidden folders (temporary
    extraction and cache folders start with ".") and ``skip`` are not descended. Within a level
    results are sorted by path, so the choice among duplicates is deterministic.

    Args:
        kind: ``"file"`` or ``"dir"``: what the match must be.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:  # unreadable folder: not ours to fail on
                continue
            for e in entries:
                is_dir = e.is_dir()
                if fnmatch.fnmatchcase(e.name, pattern) and (is_dir if kind == "dir" else e.is_file()):
                    found.append(Path(e.path))
                if is_dir and not e.name.startswith(".") and e.name not in skip:
                    below.append(Path(e.path))
        level = below
        if not level:
            break
    return found


def find_path(root: str | os.PathLike, pattern: str, kind: str = "file", max_depth: int = 6) -> Path | None:
    """The shallowest match of :func:`find_paths`, or None."""
    hits = find_paths(root, pattern, kind, max_depth)
    if len(hits) > 1:
        log.info("several matches for %s beneath %s; using %s", pattern, root, hits[0])
    return hits[0] if hits else None


def in_lra_inner_copy(path: Path) -> bool:
    """Whether ``path`` lies beneath ``lra_release/lra_release/``, the copy of the LRA release that
    the S4 and S5 loaders read (the archive also holds outer ``lra_release/<task>`` folders)."""
    parts = Path(path).parts
    return any(a == b == "lra_release" for a, b in itertools.pairwise(parts))


def choose_copy(candidates: Sequence[Path], what: str) -> Path | None:
    """Of several folders holding the same data, the one beneath ``lra_release/lra_release/`` (what
    the reference loaders read), else the shallowest (``candidates`` come shallowest first). Logs
    which copy is read, and warns when there are others (they may differ: the outer Pathfinder
    folders of the release are reported to hold other data, and a generated ListOps is not LRA's)."""
    if not candidates:
        return None
    inner = [c for c in candidates if in_lra_inner_copy(c)]
    chosen = inner[0] if inner else candidates[0]
    others = [str(c) for c in candidates if c != chosen]
    if others:
        why = "the copy the S4/S5 reference loaders read" if inner else "the shallowest"
        log.warning("%s: %d copies found; reading %s (%s), not %s", what, len(candidates), chosen, why,
                    ", ".join(others))
    else:
        log.info("%s: reading %s", what, chosen)
    return chosen


def find_split_files(root: str | os.PathLike, names: Mapping[str, str]) -> dict[str, Path] | None:
    """Split name → path of a set of files that lie side by side beneath ``root`` (e.g. a task's
    train/val/test TSVs), located through the first one; None when no complete set is found."""
    first = next(iter(names.values()))
    for hit in find_paths(root, first):
        files = {split: hit.parent / name for split, name in names.items()}
        if all(p.is_file() for p in files.values()):
            return files
    return None


# -- download -------------------------------------------------------------------------------------
def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """MD5 hex digest of a file, read in chunks (archives are several GB)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, md5: str | None = None, size: int | None = None) -> None:
    """Raise :class:`ChecksumError` naming ``path`` if its size or MD5 differs from the given ones."""
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(f"{path}: size {path.stat().st_size} bytes, expected {size}; "
                            "the file is truncated or not the published one. Delete it and download again.")
    if md5 is not None:
        got = file_md5(path)
        if got != md5.lower():
            raise ChecksumError(f"{path}: MD5 {got}, expected {md5}; the file is corrupt or not the "
                                "published one. Delete it and download again.")


def download_file(
    url: str, dest: str | os.PathLike, md5: str | None = None, size: int | None = None,
    progress: bool = True, timeout: float = 60.0, chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part`` and verify it before the final rename.

    A leftover ``.part`` from an interrupted download is resumed with an HTTP ``Range`` request; if
    the server ignores the range (status 200) the download restarts from zero. On a checksum
    mismatch the partial file is removed and :class:`ChecksumError` is raised. Network failures
    raise the underlying ``urllib``/``OSError`` exception.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ssmlit-data/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: the range starts at the end, i.e. .part is complete
            raise
        response = None
    if response is not None:
        with response:
            if offset and response.getcode() != 206:
                offset = 0  # range ignored (e.g. file:// URLs, some mirrors): start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else size
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False,
            ) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
    try:
        verify_file(part, md5=md5, size=size)
    except ChecksumError:
        part.unlink(missing_ok=True)  # a bad .part must not be resumed next time
        raise
    os.replace(part, dest)
    return dest


def fetch(source: Source, data_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Make ``source`` available beneath ``data_dir``: reuse a copy found there (verified) or
    download it from its URLs in order, then extract it if it is an archive.

    Returns the local file. Raises :class:`DownloadError` when every URL fails,
    :class:`ChecksumError` / :class:`ArchiveError` for a bad file (naming it).
    """
    data_dir = Path(data_dir)
    dest = data_dir / source.store_in / source.filename
    local = dest if dest.is_file() else find_path(data_dir, source.filename)
    if local is not None:
        verify_file(local, md5=source.md5, size=source.size)
    else:
        errors = []
        for url in source.urls:
            try:
                log.info("downloading %s -> %s", url, dest)
                local = download_file(url, dest, md5=source.md5, size=source.size, progress=progress)
                break
            except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
                errors.append(f"{url}: {e}")
        if local is None:
            raise DownloadError("; ".join(errors))
    if source.extract_to is not None:
        safe_extract(local, data_dir / source.extract_to)
    return local


# -- extraction -----------------------------------------------------------------------------------
# Exceptions that mean "the archive bytes are bad" (truncated gzip -> EOFError, bad tar headers ->
# TarError, bad deflate data -> zlib.error, ...). Generic OSError is deliberately absent so that a
# full disk is not reported as a corrupt archive.
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _member_path(name: str, archive: Path) -> PurePosixPath | None:
    """The safe relative path of an archive member, None for the archive root ("./")."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    rel = PurePosixPath(name)  # PurePosixPath drops "." components ("./bed/x.wav" -> "bed/x.wav")
    if ".." in rel.parts or "\\" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder; "
                                 "refusing to extract")
    return rel if rel.parts else None


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symbolic link on it resolved, lies in ``root`` (a resolved path)."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def _link_target(linkname: str, archive: Path, member: str) -> PurePosixPath:
    """A link's target as written in the archive; absolute targets are refused, relative ones
    (``..`` included) are resolved and checked by the caller."""
    rel = PurePosixPath(linkname)
    if linkname.startswith(("/", "\\")) or (len(linkname) > 1 and linkname[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {member!r} links to the absolute path {linkname!r}; "
                                 "refusing to extract")
    return rel


def _extract_tar(archive: Path, out: Path) -> None:
    # One streaming pass: each member is checked before anything of it is written, and everything is
    # written below `out`, a temporary folder the caller deletes on failure. Links must resolve
    # inside `out`: a symbolic link is created as is (and checked again once every member exists,
    # since a later link can change what an earlier one's path resolves to), a hard link becomes a
    # copy of the file it names, which must have been extracted before it.
    root = Path(os.path.realpath(out))
    symlinks: list[tuple[Path, str]] = []
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            rel = _member_path(member.name, archive)
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, FIFO or other special "
                                         "file; refusing to extract")
            if rel is None:
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} would replace the target folder "
                                             "by a link; refusing to extract")
                continue
            target = out / rel
            if not _inside(target.parent, root):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} would be written through a link that "
                                         "leaves the target folder; refusing to extract")
            if target.is_symlink():
                target.unlink()  # a later member replaces a link; never write through it
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.issym():
                linkname = _link_target(member.linkname, archive, member.name).as_posix()
                if not _inside(target.parent / linkname, root):
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link to {member.linkname!r}, "
                                             "outside the target folder; refusing to extract")
                os.symlink(linkname, target)
                symlinks.append((target, member.linkname))
                continue
            if member.islnk():
                source = out / _link_target(member.linkname, archive, member.name)
                if not _inside(source, root):
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a hard link to "
                                             f"{member.linkname!r}, outside the target folder; refusing to extract")
                if not source.is_file():
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a hard link to "
                                             f"{member.linkname!r}, which is not a file extracted before it; "
                                             "refusing to extract")
                shutil.copyfile(source, target)
                continue
            src = tf.extractfile(member)
            if src is None:  # pragma: no cover - regular members always have data
                continue
            with src, open(target, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
    for link, linkname in symlinks:
        if not link.exists() or not _inside(link, root):
            raise UnsafeArchiveError(f"{archive}: member {link.relative_to(out).as_posix()!r} is a link to "
                                     f"{linkname!r}, which is missing or outside the target folder once "
                                     "everything is extracted; refusing to extract")


def _extract_zip(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _member_path(info.filename, archive)
            ftype = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix file type
            if ftype == stat.S_IFLNK:
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; links are refused")
            if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a special file; refusing to extract")
            if rel is None:
                continue
            target = out / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a tar (gz/bz2/xz/plain) or zip ``archive`` into ``dest`` safely and atomically.

    Everything is first extracted into a hidden temporary folder inside ``dest``; only when the whole
    archive has been read is each top-level entry renamed into ``dest``. A top-level entry that
    already exists (and is not an empty folder) is an error rather than a silent merge.

    Returns:
        the top-level paths created in ``dest``.

    Raises:
        UnsafeArchiveError: a member has an absolute path or ``..``, is a special file, or a link
            whose target is missing or outside ``dest`` (zip symlinks are always refused).
        ArchiveError: the archive is truncated or corrupt (message names the file).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_staging(dest, ".extract-*"):
        log.info("removed %s, left by an interrupted extraction", stale)
    stage = StagingDir(dest, f".extract-{archive.name}-")
    tmp = stage.path
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
        except UnsafeArchiveError:
            raise
        except _CORRUPT as e:
            raise ArchiveError(f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}). "
                               "Delete it and download it again.") from e
        children = sorted(tmp.iterdir())
        for child in children:
            target = dest / child.name
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            elif target.exists() or target.is_symlink():
                raise DataError(f"cannot extract {archive}: {target} already exists; move or remove it and retry")
        moved = []
        for child in children:
            os.replace(child, dest / child.name)
            moved.append(dest / child.name)
        return moved
    finally:
        stage.discard()


# -- cache ----------------------------------------------------------------------------------------
def params_hash(params: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of JSON-serialisable preprocessing parameters."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def cache_path(cache_root: str | os.PathLike, task: str, params: Mapping[str, Any]) -> Path:
    """``<cache_root>/<task>-<params_hash(params)>``: one folder per distinct preprocessing."""
    return Path(cache_root) / f"{task}-{params_hash(params)}"


def read_cache_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta.json`` of a complete cache folder, or None if the folder is absent/incomplete."""
    meta = Path(path) / CACHE_META
    if not meta.is_file():
        return None
    return json.loads(meta.read_text(encoding="utf-8"))


def build_cache(
    path: str | os.PathLike, params: Mapping[str, Any], builder: Callable[[Path], Mapping[str, Any] | None]
) -> dict[str, Any]:
    """Build a cache folder once, atomically, and return its metadata.

    If ``path`` already holds a complete cache, nothing is rebuilt. Otherwise ``builder(tmp)`` writes
    the arrays into a fresh hidden staging folder ``.<name>.tmp-*`` next to ``path`` and returns
    extra metadata; then ``meta.json`` (``params`` + the extras) is written and the folder renamed to
    ``path``. If the builder raises, the staging folder is deleted and no cache exists afterwards;
    staging folders left by killed builds (Path-X: gigabytes) are deleted by the next build, while
    those of builds still running elsewhere are left alone. When another process finished the same
    cache first, its result is kept.

    Raises:
        DataError: the cache folder cannot be created (read-only ``data_dir``); the message says
            that ``task.cache_dir`` can point elsewhere.
    """
    path = Path(path)
    meta = read_cache_meta(path)
    if meta is not None:
        return meta
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_staging(path.parent, ".*.tmp-*"):
            log.info("removed %s, left by an interrupted cache build", stale)
        stage = StagingDir(path.parent, f".{path.name}.tmp-")
    except OSError as e:
        raise DataError(f"cannot write the preprocessed-data cache in {path.parent} ({e.strerror or e}); point "
                        "task.cache_dir at a writable folder (e.g. task.cache_dir=/tmp/ssmlit-cache), or "
                        "task.data_dir at a writable copy of the data") from e
    tmp = stage.path
    try:
        started = time.time()
        extra = dict(builder(tmp) or {})
        meta = {"params": dict(params), "built_s": round(time.time() - started, 2),
                "files": sorted(p.name for p in tmp.iterdir())} | extra
        atomic_write_text(tmp / CACHE_META, json.dumps(meta, indent=1, default=str))
        if path.exists() and read_cache_meta(path) is None:
            shutil.rmtree(path)  # a folder without meta.json was never completed (e.g. copied by hand)
        try:
            stage.commit(path, replace=False)
        except OSError:
            if read_cache_meta(path) is None:
                raise
        return read_cache_meta(path) or meta
    finally:
        stage.discard()


def save_array(folder: str | os.PathLike, name: str, array: np.ndarray) -> None:
    """``np.save`` to ``folder/name.npy`` (inside a cache folder under construction)."""
    np.save(Path(folder) / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)


def open_array(folder: str | os.PathLike, name: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """Create ``folder/name.npy`` as a writable memory map, for arrays too large to hold in RAM
    (Path-X: 200,000 × 16,384 uint8)."""
    return np.lib.format.open_memmap(Path(folder) / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


class LazyArray:
    """A read-only memory-mapped ``.npy`` opened on first use in each process.

    DataLoader workers receive the dataset by pickling when they are spawned; a pickled
    ``np.memmap`` would copy the whole array, so only the path travels and every process maps the
    file itself.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.array[index]

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_array": None}
