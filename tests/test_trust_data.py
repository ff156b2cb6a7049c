"""Trust (issue 10), part 3: data errors that name the file and the fix, no leftovers of killed
builds, and generator arguments that cannot write wrong splits or loop forever."""

import errno
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import write_mnist

import ssmlit.data.download as download
from ssmlit.data import DataError, MNISTDataModule
from ssmlit.data.base import EpochShuffleSampler
from ssmlit.data.download import build_cache
from ssmlit.data.listops import main as listops_main
from ssmlit.utils import StagingDir, remove_stale_staging

ROOT = Path(__file__).resolve().parents[1]


# -- class 7: data errors name the file --------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "not_gzip", "bad_crc"])
def test_corrupt_mnist_archive_names_the_file(tmp_path, damage):
    write_mnist(tmp_path)
    victim = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    blob = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(blob[: len(blob) // 2])
    elif damage == "not_gzip":
        victim.write_bytes(b"<html>404 Not Found</html>")
    else:
        victim.write_bytes(blob[:-8] + b"\0" * 8)  # CRC and size trailer zeroed
    dm = MNISTDataModule(data_dir=tmp_path, download=False)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    assert str(victim) in str(info.value) and "download it again" in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # no cache, no leftovers


def test_unwritable_cache_says_task_cache_dir_can_point_elsewhere(tmp_path, monkeypatch):
    write_mnist(tmp_path)

    def read_only(*args, **kwargs):  # the tests may run as root, for whom chmod does not bite
        raise PermissionError(errno.EROFS, "Read-only file system", str(tmp_path / "cache"))

    monkeypatch.setattr(download, "StagingDir", read_only)
    with pytest.raises(DataError, match=r"cannot write the preprocessed-data cache .*task\.cache_dir="):
        MNISTDataModule(data_dir=tmp_path, download=False).prepare_data()


def test_stale_staging_folders_of_killed_builds_are_removed_live_ones_kept(tmp_path):
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    old = cache_root / ".pathx-0123456789abcdef.tmp-dead"  # an unlocked leftover (older ssmlit, or killed)
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "all_x.npy").write_bytes(b"\0" * 1000)
    code = ("import os, sys; from ssmlit.utils import StagingDir; "
            f"s = StagingDir({str(cache_root)!r}, '.pathx-0123456789abcdef.tmp-'); "
            "(s.path / 'part.npy').write_bytes(b'1'); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], timeout=120)  # a build killed mid-way (SIGKILL)
    killed = [p for p in cache_root.iterdir() if p.is_dir() and p != old]
    assert len(killed) == 1
    live = StagingDir(cache_root, ".speech-00.tmp-")  # another build still running
    meta = build_cache(cache_root / "digits-abc", {"p": 1}, lambda out: None)
    assert meta["params"] == {"p": 1}
    assert not old.exists() and not killed[0].exists() and live.path.is_dir()
    assert sorted(p.name for p in cache_root.iterdir() if not p.name.endswith(".lock")) == \
        sorted(["digits-abc", live.path.name])
    live.discard()
    assert remove_stale_staging(cache_root, ".*.tmp-*") == []


def test_killed_extraction_leftovers_are_removed(tmp_path):
    import tarfile

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "a.txt", arcname="folder/a.txt")
    dest = tmp_path / "data"
    leftover = dest / ".extract-a.tar.gz-dead"
    leftover.mkdir(parents=True)
    download.safe_extract(archive, dest)
    assert (dest / "folder" / "a.txt").read_text() == "hello" and not leftover.exists()


def test_corrupt_raw_text_is_a_data_error(tmp_path):
    from fixtures_data import write_listops

    from ssmlit.data import ListOpsDataModule

    write_listops(tmp_path)
    next(tmp_path.rglob("basic_train.tsv")).write_bytes(b"Source\tTarget\n\xff\xfe\xfa garbage\t1\n")
    with pytest.raises(DataError, match=r"corrupt or truncated .*UnicodeDecodeError"):
        ListOpsDataModule(data_dir=tmp_path, download=False).prepare_data()


# -- class 2 (data order): the training order is a function of (seed, epoch) ------------------------
def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    list(iter(a))  # iterating does not advance anything
    b.set_epoch(4)
    b.set_epoch(1)
    a.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    a.set_epoch(2)
    assert list(a) != list(b)
    assert list(EpochShuffleSampler(50, seed=4)) != list(EpochShuffleSampler(50, seed=3))


# -- class 5: the ListOps generator refuses what it cannot do --------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--train", "-5"], "argument --train: -5, must be an integer >= 1"),
    (["--val", "abc"], "argument --val: 'abc' is not an integer"),
    (["--max-args", "1"], "argument --max-args: 1, must be an integer >= 2"),
    (["--min-length", "2000", "--max-length", "100"], "need 0 <= --min-length < --max-length"),
])
def test_listops_generator_rejects_bad_arguments(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        listops_main(["--out", str(tmp_path / "out"), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_listops_generator_gives_up_instead_of_looping(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        listops_main(["--out", str(tmp_path / "out"), "--train", "3", "--val", "1", "--test", "1",
                      "--min-length", "1990", "--max-length", "1992", "--max-tries", "300"])
    assert info.value.code == 2 and "only 0 of 5 trees" in capsys.readouterr().err


def test_listops_cli_impossible_limits_end_at_once(tmp_path):
    # a subprocess with a timeout: the old generator looped forever on these limits
    proc = subprocess.run([sys.executable, "-m", "ssmlit.data.listops", "--out", str(tmp_path), "--max-depth", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("python -m ssmlit.data.listops: error: --min-length=500 cannot be exceeded: with "
                                   "--max-depth=2 and --max-args=10 the longest tree has 12 tokens (and lengths must "
                                   "stay below --max-length=2000)")


def test_plain_idx_files_named_gz_still_load(tmp_path):
    # gzip is recognised by its magic bytes, not the name: a gunzipped file that kept its name loads
    write_mnist(tmp_path, gz=False)
    for f in (tmp_path / "MNIST" / "raw").iterdir():
        f.rename(f.with_name(f.name + ".gz"))
    plain = MNISTDataModule(data_dir=tmp_path, download=False)
    plain.prepare_data()
    plain.setup()
    assert len(plain.test_set) == 5
