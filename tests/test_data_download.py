"""The shared download / extraction / search / cache helpers and the split rule."""

import hashlib
import io
import os
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from fixtures_data import tar_with_members

from ssmlit.data.base import seeded_split, split_sizes
from ssmlit.data.download import (
    ArchiveError,
    ChecksumError,
    build_cache,
    cache_path,
    download_file,
    find_paths,
    params_hash,
    read_cache_meta,
    safe_extract,
    save_array,
)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_safe_extract_tar_and_zip(tmp_path):
    tar = tmp_path / "ok.tar.gz"
    tar_with_members(tar, [("./", "dir", b""), ("top/", "dir", b""), ("./top/a.txt", "file", b"alpha"),
                           ("top/sub/b.bin", "file", b"\x00\x01")])
    out = tmp_path / "out"
    created = safe_extract(tar, out)
    assert created == [out / "top"]
    assert (out / "top" / "a.txt").read_bytes() == b"alpha"
    assert (out / "top" / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert _entries(out) == ["top"]  # the temporary extraction folder is gone

    zpath = tmp_path / "ok.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("z/c.txt", "gamma")
    safe_extract(zpath, out)
    assert (out / "z" / "c.txt").read_text() == "gamma"
    with pytest.raises(Exception, match="already exists"):  # never merges into an existing folder
        safe_extract(zpath, out)


@pytest.mark.parametrize("member", [
    ("../evil", "file", b"x"),
    ("good/../../evil", "file", b"x"),
    ("/tmp/ssmlit-evil-abs", "file", b"x"),
    ("link", "symlink", "../evil"),
    ("link", "symlink", "/etc/passwd"),
    ("link", "symlink", "inside.txt"),  # a link to nothing: its target cannot be shown to stay inside
    ("hard", "hardlink", "../evil"),
    ("dev", "chardev", b""),
])
def test_unsafe_tar_members_are_rejected(tmp_path, member):
    archive = tmp_path / "bad.tar.gz"
    tar_with_members(archive, [("good/ok.txt", "file", b"fine"), member])
    out = tmp_path / "sub" / "out"
    with pytest.raises(ArchiveError, match="refus") as err:
        safe_extract(archive, out)
    assert str(archive) in str(err.value)
    assert _entries(out) == []  # nothing extracted, temporary folder removed
    assert not (tmp_path / "sub" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not os.path.exists("/tmp/ssmlit-evil-abs")


def test_unsafe_zip_member_is_rejected(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil", "x")
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="outside"):
        safe_extract(archive, out)
    assert _entries(out) == [] and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", ["gz", "plain"])
def test_truncated_archive_names_the_file(tmp_path, kind):
    archive = tmp_path / f"data.tar{'.gz' if kind == 'gz' else ''}"
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    with tarfile.open(archive, "w:gz" if kind == "gz" else "w") as tf:
        info = tarfile.TarInfo("folder/big.bin")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="corrupt or truncated") as err:
        safe_extract(archive, out)
    assert str(archive) in str(err.value)
    assert _entries(out) == []


def test_download_verifies_checksum_and_replaces_stale_part(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello world" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "dl" / "file.bin"
    dest.parent.mkdir()
    (dest.parent / "file.bin.part").write_bytes(b"garbage from an earlier try")  # file:// ignores Range
    assert download_file(src.as_uri(), dest, md5=md5, size=11000, progress=False) == dest
    assert dest.read_bytes() == src.read_bytes() and not (dest.parent / "file.bin.part").exists()

    bad = tmp_path / "dl" / "bad.bin"
    with pytest.raises(ChecksumError, match="MD5") as err:
        download_file(src.as_uri(), bad, md5="0" * 32, progress=False)
    assert str(bad.parent / "bad.bin.part") in str(err.value)
    assert not bad.exists() and not (bad.parent / "bad.bin.part").exists()
    with pytest.raises(ChecksumError, match="size"):
        download_file(src.as_uri(), bad, size=5, progress=False)


def test_find_paths_is_breadth_first_and_skips_heavy_and_hidden_folders(tmp_path):
    for rel in ["a/b/c/target.txt", "z/target.txt", "imgs/target.txt", ".tmp/target.txt", "a/target.txt/x"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    hits = find_paths(tmp_path, "target.txt")
    assert hits == [tmp_path / "z" / "target.txt", tmp_path / "a" / "b" / "c" / "target.txt"]
    assert find_paths(tmp_path, "target.txt", kind="dir") == [tmp_path / "a" / "target.txt"]
    assert find_paths(tmp_path, "target.txt", max_depth=1) == [tmp_path / "z" / "target.txt"]
    assert find_paths(tmp_path / "missing", "target.txt") == []


def test_build_cache_is_atomic_and_built_once(tmp_path):
    params = {"task": "t", "l_max": 5}
    path = cache_path(tmp_path, "t", params)
    assert path.name == f"t-{params_hash(params)}" and params_hash(params) != params_hash({**params, "l_max": 6})
    assert params_hash(params) == params_hash(dict(reversed(params.items())))

    def failing(out):
        save_array(out, "half", np.zeros(3))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_cache(path, params, failing)
    assert not path.exists() and list(tmp_path.iterdir()) == []  # no cache, no temporary leftovers

    calls = []

    def builder(out):
        calls.append(out)
        save_array(out, "x", np.arange(4, dtype=np.uint8))
        return {"size": 4}

    meta = build_cache(path, params, builder)
    assert meta["params"] == params and meta["size"] == 4 and meta["files"] == ["x.npy"]
    assert build_cache(path, params, builder) == meta and len(calls) == 1
    assert read_cache_meta(path) == meta
    loaded = np.load(path / "x.npy", mmap_mode="r")
    assert loaded.dtype == np.uint8 and loaded.tolist() == [0, 1, 2, 3]


def test_split_rule_matches_random_split():
    assert split_sizes(60_000, [0.1]) == [54_000, 6_000]
    assert split_sizes(200_000, [0.1, 0.1]) == [160_000, 20_000, 20_000]
    assert split_sizes(6, [0.1, 0.1]) == [4, 1, 1]  # tiny sets still get one held-out example
    train, val = seeded_split(50, [0.1], seed=42)
    ref = torch.utils.data.random_split(range(50), [45, 5], generator=torch.Generator().manual_seed(42))
    assert train.tolist() == list(ref[0].indices) and val.tolist() == list(ref[1].indices)
    again = seeded_split(50, [0.1], seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val)))
    other = seeded_split(50, [0.1], seed=0)
    assert not np.array_equal(other[1], val)
    assert sorted(np.concatenate((train, val)).tolist()) == list(range(50))
    with pytest.raises(ValueError):
        split_sizes(2, [0.5, 0.5])


def test_zip_symlink_member_is_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)  # S_IFLNK: how zip stores a Unix symlink
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
