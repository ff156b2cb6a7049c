"""Pathfinder (32×32) and Path-X (128×128) on fixture trees in the LRA release layout."""

import shutil

import numpy as np
import pytest
import torch
from fixtures_data import write_pathfinder

from ssmlit.data import PathfinderDataModule
from ssmlit.data.download import DataError


def test_pathfinder_order_split_values_and_cache(tmp_path, monkeypatch):
    labels = write_pathfinder(tmp_path, 32, n_files=11, per_file=2)
    dm = PathfinderDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=4, seed=42)
    dm.prepare_data()
    dm.setup()
    cache = dm.cache_path
    pixels = np.load(cache / "all_x.npy", mmap_mode="r")
    assert pixels.dtype == np.uint8 and pixels.shape == (22, 1024)
    # metadata files in int(stem) order 0, 1, ..., 10 (not 0, 1, 10, 2), lines in order
    assert pixels[:, 0].tolist() == list(range(22))
    assert np.load(cache / "all_y.npy").tolist() == labels.tolist()

    ref = torch.utils.data.random_split(range(22), [18, 2, 2], generator=torch.Generator().manual_seed(42))
    for ds, part in zip((dm.train_set, dm.val_set, dm.test_set), ref):
        assert ds.indices.tolist() == list(part.indices)
    x, y, lengths = next(iter(dm.test_dataloader()[0]))
    assert x.shape == (2, 1024, 1) and x.dtype == torch.float32 and lengths.tolist() == [1024, 1024]
    assert x.min() >= 0 and x.max() <= 1  # s4's center: false
    idx = dm.test_set.indices
    assert torch.equal(x[:, 0, 0] * 255, torch.tensor(idx, dtype=torch.float32)) and y.tolist() == labels[idx].tolist()
    assert dm.model_kwargs() == dict(d_input=1, vocab_size=None, d_output=2, retrieval=False)

    shutil.rmtree(tmp_path / "lra_release")
    monkeypatch.setattr(PathfinderDataModule, "build_cache", lambda *a: pytest.fail("rebuilt the cache"))
    centred = PathfinderDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=4, center=True, seed=42)
    centred.prepare_data()  # normalisation is per batch: same cache
    centred.setup()
    xc = next(iter(centred.test_dataloader()[0]))[0]
    assert centred.cache_path == cache and torch.allclose(xc, x * 2 - 1)  # S5's [-1, 1]


def test_pathx_is_uint8_128x128(tmp_path):
    labels = write_pathfinder(tmp_path, 128, n_files=2, per_file=3)
    write_pathfinder(tmp_path, 32, n_files=1, per_file=2)  # another resolution beside it is not picked up
    dm = PathfinderDataModule(resolution=128, data_dir=tmp_path, batch_size=4, seed=42, prepare_workers=2)
    dm.prepare_data()
    dm.setup()
    pixels = np.load(dm.cache_path / "all_x.npy", mmap_mode="r")
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 128 * 128) and pixels[:, 0].tolist() == list(range(6))
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [4, 1, 1]
    x, y, lengths = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16384, 1) and (lengths == 16384).all() and set(y.tolist()) <= {0, 1}
    assert dm.l_max == 16384 and np.load(dm.cache_path / "all_y.npy").tolist() == labels.tolist()


def test_pathfinder_bad_image_and_missing_data(tmp_path):
    write_pathfinder(tmp_path, 32, n_files=2, per_file=2)
    bad = tmp_path / "lra_release/lra_release/pathfinder32/curv_contour_length_14/imgs/1/sample_0.png"
    bad.write_bytes(bad.read_bytes()[:40])
    dm = PathfinderDataModule(data_dir=tmp_path)
    with pytest.raises(DataError, match="cannot read the image") as err:
        dm.prepare_data()
    assert str(bad) in str(err.value) and not dm.cache_path.exists()

    missing = PathfinderDataModule(resolution=128, data_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError) as err:
        missing.prepare_data()
    msg = str(err.value)
    assert "pathfinder128/curv_contour_length_14/metadata" in msg and "lra_release.gz" in msg
    with pytest.raises(ValueError, match="resolution"):
        PathfinderDataModule(resolution=100)
