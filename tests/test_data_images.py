"""Pixel tasks on fixture trees: sMNIST / psMNIST (idx), sCIFAR / LRA Image (CIFAR pickles)."""

import pickle
import shutil

import numpy as np
import pytest
import torch
from fixtures_data import idx_bytes, write_cifar, write_mnist
from PIL import Image

from ssmlit.data import CIFARDataModule, MNISTDataModule
from ssmlit.data.download import DataError
from ssmlit.data.images import bit_reversal_permutation, read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_smnist_values_split_and_cache(tmp_path, monkeypatch, gz):
    data = write_mnist(tmp_path, gz=gz)
    dm = MNISTDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=8, seed=42)
    dm.prepare_data()
    dm.setup()
    images, labels = data["train"]
    ref = torch.utils.data.random_split(range(20), [18, 2], generator=torch.Generator().manual_seed(42))
    assert dm.train_set.indices.tolist() == list(ref[0].indices) and dm.val_set.indices.tolist() == list(ref[1].indices)
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [18, 2, 5]
    x, y, lengths = next(iter(dm.val_dataloader()[0]))
    assert x.shape == (2, 784, 1) and x.dtype == torch.float32 and lengths.tolist() == [784, 784]
    j = dm.val_set.indices[0]
    assert torch.equal(x[0, :, 0], torch.from_numpy(images[j].reshape(-1)).float() / 255)  # ToTensor, raster order
    assert y.tolist() == [int(labels[i]) for i in dm.val_set.indices] and y.dtype == torch.long
    xt, yt, _ = next(iter(dm.test_dataloader()[0]))
    assert yt.tolist() == data["t10k"][1].tolist() and xt.min() >= 0 and xt.max() <= 1
    assert dm.model_kwargs() == dict(d_input=1, vocab_size=None, d_output=10, retrieval=False)

    cache = dm.cache_path
    assert np.load(cache / "train_x.npy", mmap_mode="r").dtype == np.uint8
    shutil.rmtree(tmp_path / "MNIST")
    monkeypatch.setattr(MNISTDataModule, "locate_raw", lambda self: pytest.fail("searched raw files again"))
    ps = MNISTDataModule(data_dir=tmp_path, permute="bitrev", seed=42)
    ps.prepare_data()  # the permutation is applied per batch: sMNIST and psMNIST share one cache
    ps.setup()
    assert ps.cache_path == cache


def test_psmnist_bit_reversal_and_random_permutations(tmp_path):
    write_mnist(tmp_path)
    perm = bit_reversal_permutation()
    assert perm[:10].tolist() == [0, 512, 256, 768, 128, 640, 384, 64, 576, 320]
    assert sorted(perm.tolist()) == list(range(784))
    plain = MNISTDataModule(data_dir=tmp_path, batch_size=5, seed=42)
    plain.prepare_data()
    plain.setup()
    xs = next(iter(plain.test_dataloader()[0]))[0]
    for permute, expected in (("bitrev", perm), ("random", np.random.RandomState(92916).permutation(784))):
        dm = MNISTDataModule(data_dir=tmp_path, batch_size=5, permute=permute, seed=42)
        dm.setup()
        assert np.array_equal(dm.permutation(), expected)
        xp = next(iter(dm.test_dataloader()[0]))[0]
        assert torch.equal(xp, xs[:, torch.from_numpy(expected)])  # x_perm[t] = x[perm[t]]
    other = MNISTDataModule(data_dir=tmp_path, permute="random", permute_seed=1)
    assert not np.array_equal(other.permutation(), np.random.RandomState(92916).permutation(784))
    with pytest.raises(ValueError, match="permute"):
        MNISTDataModule(permute="shuffle")


def test_idx_reader_checks_format(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "ok").write_bytes(idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "ok"), arr)
    (tmp_path / "short").write_bytes(idx_bytes(arr)[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x12\x34" + idx_bytes(arr)[2:])
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")


def test_scifar_colour_normalisation_and_order(tmp_path):
    data = write_cifar(tmp_path)
    dm = CIFARDataModule(data_dir=tmp_path, batch_size=4, eval_batch_size=8, seed=42)
    dm.prepare_data()
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [18, 2, 5]
    assert dm.model_kwargs()["d_input"] == 3
    x, y, lengths = next(iter(dm.test_dataloader()[0]))
    assert x.shape == (5, 1024, 3) and x.dtype == torch.float32 and (lengths == 1024).all()
    row, labels = data["test_batch"]
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    for t in (0, 33, 1023):  # pixel t of channel c is row[c * 1024 + t]
        for c in range(3):
            assert x[0, t, c].item() == pytest.approx((row[0, c * 1024 + t] / 255 - mean[c]) / std[c], abs=1e-5)
    assert y.tolist() == labels
    # the train index order is batches 1..5 concatenated (the order the seeded split permutes)
    j = 9  # batch 3, row 1
    xj, yj = dm.train_set.x[j], dm.train_set.y[j]
    assert np.array_equal(xj[:, 0], data["data_batch_3"][0][1, :1024]) and yj == data["data_batch_3"][1][1]


def test_lra_image_grayscale_matches_pil_and_tokenize(tmp_path, monkeypatch):
    data = write_cifar(tmp_path)
    dm = CIFARDataModule(data_dir=tmp_path, grayscale=True, batch_size=5)
    dm.prepare_data()
    dm.setup()
    assert dm.model_kwargs()["d_input"] == 1
    x = next(iter(dm.test_dataloader()[0]))[0]
    assert x.shape == (5, 1024, 1)
    planar = data["test_batch"][0][2].reshape(3, 32, 32).transpose(1, 2, 0)
    gray = np.asarray(Image.fromarray(planar).convert("L"), dtype=np.float64).reshape(-1)
    assert torch.allclose(x[2, :, 0].double(), torch.from_numpy((gray / 255 - 122.6 / 255) / (61.0 / 255)), atol=1e-5)
    luma = planar.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray - luma).max() <= 1  # ITU-R 601-2 luma, integer

    tok = CIFARDataModule(data_dir=tmp_path, grayscale=True, tokenize=True, batch_size=5)
    monkeypatch.setattr(CIFARDataModule, "build_cache", lambda *a: pytest.fail("rebuilt the cache"))
    tok.prepare_data()  # same cache as the normalised variant
    tok.setup()
    xt = next(iter(tok.test_dataloader()[0]))[0]
    assert xt.dtype == torch.long and xt.shape == (5, 1024) and torch.equal(xt[2], torch.from_numpy(gray).long())
    assert tok.model_kwargs() == dict(d_input=None, vocab_size=256, d_output=10, retrieval=False)
    assert tok.cache_path == dm.cache_path != CIFARDataModule(data_dir=tmp_path).cache_path
    with pytest.raises(ValueError, match="grayscale"):
        CIFARDataModule(tokenize=True)


def test_cifar_refuses_code_in_pickles(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    dm = CIFARDataModule(data_dir=tmp_path)
    with pytest.raises(DataError, match=r"refusing to load .*print"):
        dm.prepare_data()
    assert not dm.cache_path.exists()
