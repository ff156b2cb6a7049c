"""Which copy of the data is read when a data folder holds several: the LRA release's two Pathfinder
trees, and a generated ListOps beside the release's."""

import json
import logging
import shutil

import numpy as np
from fixtures_data import write_listops, write_pathfinder

from ssmlit.data import ListOpsDataModule, PathfinderDataModule
from ssmlit.data.listops import main as generate_listops


def test_pathfinder_reads_the_inner_copy_the_reference_loaders_use(tmp_path, caplog):
    # outer lra_release/pathfinder32 (shallower, 6 images) and inner lra_release/lra_release/pathfinder32 (22)
    write_pathfinder(tmp_path / "tmp", 32, n_files=3, per_file=2)
    (tmp_path / "lra_release").mkdir()
    shutil.move(tmp_path / "tmp" / "lra_release" / "lra_release" / "pathfinder32", tmp_path / "lra_release")
    write_pathfinder(tmp_path, 32, n_files=11, per_file=2)
    inner = tmp_path / "lra_release" / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    dm = PathfinderDataModule(data_dir=tmp_path, batch_size=4, seed=42)
    with caplog.at_level(logging.INFO):
        dm.prepare_data()
        dm.setup()
    assert np.load(dm.cache_path / "all_y.npy").size == 22
    assert json.loads((dm.cache_path / "meta.json").read_text())["raw"] == str(inner)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 copies found" in m and str(inner) in m and "reference loaders" in m for m in warned), warned
    assert any(f"built from {inner}" in r.getMessage() for r in caplog.records)


def test_pathfinder_single_outer_copy_is_used_and_named(tmp_path, caplog):
    write_pathfinder(tmp_path / "tmp", 32, n_files=2, per_file=2)
    shutil.move(tmp_path / "tmp" / "lra_release" / "lra_release", tmp_path / "only")
    dm = PathfinderDataModule(data_dir=tmp_path, batch_size=4, seed=42)
    with caplog.at_level(logging.INFO):
        dm.prepare_data()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("reading " + str(tmp_path / "only" / "pathfinder32") in r.getMessage() for r in caplog.records)


def test_listops_prefers_the_release_copy_and_warns_about_a_generated_one(tmp_path, caplog):
    rows = write_listops(tmp_path)  # lra_release/lra_release/listops-1000
    generated = tmp_path / "listops-1000"  # where the generator's help suggests writing, shallower
    generate_listops(["--out", str(generated), "--train", "3", "--val", "1", "--test", "1",
                      "--min-length", "5", "--max-length", "40"])
    dm = ListOpsDataModule(data_dir=tmp_path, batch_size=2)
    with caplog.at_level(logging.INFO):
        dm.prepare_data()
        dm.setup()
    assert len(dm.train_set) == len(rows["train"])  # the release's, not the 3 generated rows
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("listops: 2 copies" in m and str(generated) in m for m in warned), warned
    assert any("listops: cache" in r.getMessage() and "lra_release/lra_release" in r.getMessage()
               for r in caplog.records)
