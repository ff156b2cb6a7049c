"""Real-archive robustness (issue 12, part 8): AAN TSVs with blank and malformed lines, tar links
that stay inside the extraction folder, and CIFAR batches pickled the way Python 2 wrote them."""

import json
import logging
import os
import pickle
import pickletools
import struct
from typing import ClassVar

import numpy as np
import pytest
from fixtures_data import LRA, tar_with_members, write_aan

from ssmlit.data import AANDataModule, CIFARDataModule
from ssmlit.data.download import ArchiveError, safe_extract
from ssmlit.data.images import read_cifar_batch


# -- AAN ----------------------------------------------------------------------------------------------
def test_aan_skips_blank_lines_and_counts_malformed_ones(tmp_path, caplog):
    write_aan(tmp_path)
    test_tsv = tmp_path / LRA / "tsv_data" / "new_aan_pairs.test.tsv"
    good = test_tsv.read_text(encoding="utf-8").splitlines(keepends=True)
    # line 2: four fields; line 4: label "2.0"; then a blank line and an empty last line
    test_tsv.write_text(good[0] + "1.0\tid\tid\tonly four\n" + good[1] + "2.0\ta\tb\tc\td\n" + "\n" + "\n",
                        encoding="utf-8")
    dm = AANDataModule(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="ssmlit.data.retrieval"):
        dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 2  # the two good rows; blank lines are not rows and not errors
    warning = " ".join(r.getMessage() for r in caplog.records if "malformed" in r.getMessage())
    assert f"{test_tsv}: skipped 2 malformed line(s): line 2: expected 5 tab-separated fields" in warning
    assert "line 4: label '2.0' is not 0 or 1" in warning
    meta = json.loads((dm.cache_path / "meta.json").read_text())
    assert meta["malformed"] == {"test": {"file": str(test_tsv), "count": 2, "lines": [2, 4]}}
    assert meta["sizes"]["test"] == 2


def test_aan_blank_last_line_alone_is_not_malformed(tmp_path):
    write_aan(tmp_path)
    for tsv in (tmp_path / LRA / "tsv_data").glob("*.tsv"):
        tsv.write_text(tsv.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    dm = AANDataModule(data_dir=tmp_path)
    dm.prepare_data()
    assert json.loads((dm.cache_path / "meta.json").read_text())["malformed"] == {}


# -- tar links ------------------------------------------------------------------------------------------
def test_tar_links_inside_the_target_are_extracted(tmp_path):
    archive = tmp_path / "links.tar.gz"
    tar_with_members(archive, [
        ("top/data/a.txt", "file", b"alpha"),
        ("top/alias.txt", "symlink", "data/a.txt"),
        ("top/data/up.txt", "symlink", "../alias.txt"),  # a link to a link, through ".."
        ("top/folder", "symlink", "data"),  # a link to a folder
        ("top/copy.txt", "hardlink", "top/data/a.txt"),
    ])
    out = tmp_path / "out"
    safe_extract(archive, out)
    top = out / "top"
    assert (top / "alias.txt").is_symlink() and (top / "alias.txt").read_bytes() == b"alpha"
    assert (top / "data" / "up.txt").read_bytes() == b"alpha" and (top / "folder" / "a.txt").read_bytes() == b"alpha"
    assert not (top / "copy.txt").is_symlink() and (top / "copy.txt").read_bytes() == b"alpha"  # a copy
    assert os.readlink(top / "alias.txt") == "data/a.txt"  # relative: still valid after the final rename
    assert sorted(p.name for p in out.iterdir()) == ["top"]


@pytest.mark.parametrize("members", [
    # a link whose folder is itself a link: ".." then climbs out of the target
    [("a", "symlink", "."), ("a/l", "symlink", "..")],
    # valid when created (sub is missing, so "sub/.." stays inside), escaping once "sub" becomes a link
    [("keep/f", "file", b"x"), ("l", "symlink", "sub/../x"), ("sub", "symlink", ".")],
    # a hard link to a file that is not extracted before it
    [("copy", "hardlink", "later.txt"), ("later.txt", "file", b"x")],
    # a file written through a link that leaves the target
    [("d", "symlink", "sub"), ("sub", "symlink", ".."), ("d/evil", "file", b"x")],
])
def test_tar_links_leaving_the_target_are_refused(tmp_path, members):
    archive = tmp_path / "bad.tar.gz"
    tar_with_members(archive, members)
    out = tmp_path / "box" / "out"
    with pytest.raises(ArchiveError, match="refusing to extract") as err:
        safe_extract(archive, out)
    assert str(archive) in str(err.value)
    assert not any(out.iterdir()) and sorted(p.name for p in (tmp_path / "box").iterdir()) == ["out"]
    assert not (tmp_path / "box" / "evil").exists() and not (tmp_path / "box" / "x").exists()


# -- CIFAR batches as Python 2 wrote them ------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Protocol 2 with every str and bytes written as a Python 2 byte string (SHORT_BINSTRING /
    BINSTRING), which is how cPickle stored the CIFAR-10 dicts: Python 3 reads those back as str
    with ``encoding="latin1"`` and as bytes with ``encoding="bytes"``."""

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch) | {str: save_py2_str, bytes: save_py2_str}


def py2_pickle(obj) -> bytes:
    import io

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # NumPy 1 (and the real files) name numpy.core; NumPy 2 pickles name numpy._core
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_py2_cifar(root, per_batch=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(per_batch) + 3 * k) % 10]
        d = {"batch_label": f"training batch {k + 1} of 5", "labels": labels, "data": data,
             "filenames": [f"img_{k}_{i}.png" for i in range(per_batch)]}
        (folder / name).write_bytes(py2_pickle(d))
        out[name] = (data, labels)
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": ["airplane"] * 10, "num_vis": 3072}))
    return out


def test_cifar_reader_loads_python2_protocol2_batches(tmp_path):
    batches = write_py2_cifar(tmp_path)
    blob = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    ops = {op.name for op, _, _ in pickletools.genops(blob)}
    assert blob[:2] == b"\x80\x02" and "SHORT_BINSTRING" in ops and "BINSTRING" in ops  # the 3072-byte rows
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}  # no Python 3 strings
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert set(pickle.loads(blob, encoding="bytes")) == {b"batch_label", b"labels", b"data", b"filenames"}

    data, labels = read_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    src, src_labels = batches["data_batch_1"]
    assert labels.tolist() == src_labels
    assert np.array_equal(data, src.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    dm = CIFARDataModule(data_dir=tmp_path, batch_size=2, val_frac=0.2)
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 15 and len(dm.test_set) == 3


def test_cifar_reader_refuses_code_in_a_python2_pickle(tmp_path):
    evil = b"\x80\x02cos\nsystem\nU\x04trueq\x00\x85q\x01Rq\x02."  # os.system("true"), Python 2 style
    path = tmp_path / "data_batch_1"
    path.write_bytes(evil)
    with pytest.raises(Exception, match=r"refusing to load os\.system"):
        read_cifar_batch(path)
