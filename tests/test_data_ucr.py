"""The UCR/UEA .ts data module on tiny files written here in the exact format, its errors, its cache,
and the embedded PLAID task read from the installed sktime package."""

import importlib.util

import numpy as np
import pytest
import torch

from ssmlit.data import download
from ssmlit.data.ucr import PLAIDDataModule, TSFormatError, UCRDataModule, read_ts

UNI = """# a comment line
@problemName Tiny
@timeStamps false
@missing true
@univariate true
@equalLength false
@classLabel true up down flat
@data
1,2,3,4:up
4,3,2,?,?:down
0.5,0.5:flat
1e-3,2E1,-3,7:up
5,4:down
0,0,0:flat
"""

MULTI = """@problemName TinyMV
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength true
@seriesLength 3
@classLabel true a b
@data
1,2,3:10,20,30:a
3,2,1:30,20,10:b
1,1,1:2,2,2:a
4,4,4:0,0,0:b
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_univariate_parsing(tmp_path):
    d = read_ts(_write(tmp_path, "t.ts", UNI))
    assert d.problem == "Tiny" and d.dims == 1 and d.class_labels == ["up", "down", "flat"]
    assert d.lengths.tolist() == [4, 3, 2, 4, 2, 3]  # trailing '?' shorten a series
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert d.series[3][:, 0].tolist() == pytest.approx([1e-3, 20.0, -3.0, 7.0])


def test_multivariate_parsing_keeps_channels_apart(tmp_path):
    d = read_ts(_write(tmp_path, "m.ts", MULTI))
    assert d.dims == 2 and d.series[0].shape == (3, 2)
    assert d.series[1].tolist() == [[3, 30], [2, 20], [1, 10]]


@pytest.mark.parametrize(("mutate", "line", "reason"), [
    (lambda t: t.replace("1,2,3,4:up", "1,2,x,4:up"), 9, "'x' is not a number"),
    (lambda t: t.replace("5,4:down", "5,4:sideways"), 13, "class label 'sideways' is not declared"),
    (lambda t: t.replace("0.5,0.5:flat", "0.5,?,0.5:flat"), 11, "missing value '\\?' inside the series"),
    (lambda t: t.replace("0.5,0.5:flat", "0.5:0.5:flat"), 11, "expected 1 dimension"),
    (lambda t: t.replace("@missing true", "@missing false"), 10, "header says @missing false"),
    (lambda t: t.replace("@timeStamps false", "@timeStamps true"), 8, "@timeStamps true is not supported"),
    (lambda t: t.replace("@classLabel true up down flat", "@targetLabel true"), 7, "regression"),
    (lambda t: t.replace("@equalLength false", "@colour blue"), 6, "unknown header key @colour"),
    (lambda t: t.replace("@univariate true", "@univariate maybe"), 8, "@univariate must be true or false"),
    (lambda t: t.replace("1,2,3,4:up", "1,2,3,4,:up"), 9, "'' is not a number"),
])
def test_malformed_files_name_the_line_and_the_reason(tmp_path, mutate, line, reason):
    p = _write(tmp_path, "bad.ts", mutate(UNI))
    with pytest.raises(TSFormatError, match=rf"bad\.ts:{line}: .*{reason}"):
        read_ts(p)


def test_header_contradictions(tmp_path):
    with pytest.raises(TSFormatError, match="case 2 has length 2, the header says @seriesLength 3"):
        read_ts(_write(tmp_path, "m.ts", MULTI.replace("3,2,1:30,20,10:b", "3,2:30,20:b")))
    with pytest.raises(TSFormatError, match="different lengths"):
        read_ts(_write(tmp_path, "m2.ts", MULTI.replace("1,1,1:2,2,2:a", "1,1,1:2,2:a")))
    with pytest.raises(TSFormatError, match="no cases after @data"):
        read_ts(_write(tmp_path, "e.ts", UNI.split("@data")[0] + "@data\n"))


def _module(tmp_path, train_text=UNI, test_text=UNI, **kw):
    train = _write(tmp_path, "Tiny_TRAIN.ts", train_text)
    test = _write(tmp_path, "Tiny_TEST.ts", test_text)
    return UCRDataModule(train_file=str(train), test_file=str(test), data_dir=tmp_path, val_frac=0.34, **kw)


def test_data_module_pads_normalizes_splits_and_caches(tmp_path):
    dm = _module(tmp_path, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.d_input, dm.num_classes, dm.l_max) == (1, 3, 4)
    assert len(dm.train_set) + len(dm.val_set) == 6 and len(dm.val_set) == 2 and len(dm.test_set) == 6
    x, _, lengths = next(iter(dm.test_dataloader()[0]))
    assert x.shape[0] == 4 and x.shape[2] == 1 and (lengths >= 2).all()
    for i, n in enumerate(lengths.tolist()):
        assert (x[i, n:] == 0).all()  # right padding
    # z-scored with the training split's valid steps only: mean 0, std 1 there.
    tr = torch.cat([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert float(tr.mean()) == pytest.approx(0, abs=1e-6)
    assert float(tr.std(unbiased=False)) == pytest.approx(1, rel=1e-5)
    # The same seed gives the same split; another seed another.
    again = _module(tmp_path)
    again.setup("fit")
    assert torch.equal(again.val_set.y, dm.val_set.y) and torch.equal(again.val_set.x, dm.val_set.x)
    other = _module(tmp_path, seed=1)
    other.setup("fit")
    assert not torch.equal(other.train_set.lengths, dm.train_set.lengths)
    # Training batches: every case once per epoch, batches of similar lengths.
    seen = [i for xb, yb, lb in dm.train_dataloader() for i in lb.tolist()]
    assert sorted(seen) == sorted(dm.train_set.lengths.tolist())


def test_series_normalization_keeps_shape_and_scale(tmp_path):
    dm = _module(tmp_path, MULTI, MULTI, normalize="series")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.d_input == 4  # 2 z-scored channels + their 2 log-RMS channels
    x, n = dm.test_set.x, dm.test_set.lengths
    raw = read_ts(tmp_path / "Tiny_TEST.ts").series
    for i in range(len(raw)):
        r = torch.from_numpy(raw[i])
        std = r.std(0, unbiased=False)
        want = (r - r.mean(0)) / std.clamp(min=1e-12)
        assert torch.allclose(x[i, : int(n[i]), :2], want, atol=1e-5)  # equal lengths: file order
    amp = x[:, 0, 2:]  # constant over each series
    assert torch.equal(x[:, 1, 2:], amp)
    assert amp[3, 0] > amp[1, 0]  # case 4 (4,4,4) has a larger RMS than case 2 (3,2,1)


def test_multivariate_module(tmp_path):
    dm = _module(tmp_path, MULTI, MULTI, normalize="none")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.d_input == 2 and dm.num_classes == 2 and dm.model_kwargs()["d_input"] == 2
    x, _, lengths = next(iter(dm.test_dataloader()[0]))
    assert x.shape == (4, 3, 2) and lengths.tolist() == [3, 3, 3, 3]


def test_a_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    dm = _module(tmp_path, UNI, UNI.replace("5,4:down", "5,4:sideways"))
    with pytest.raises(TSFormatError, match=r"Tiny_TEST\.ts:13"):
        dm.prepare_data()
    cache_root = tmp_path / "cache"
    assert not cache_root.exists() or not any(cache_root.iterdir())  # no half-written folder
    # A mismatch between the files is an error too, and an edited file gets a new cache.
    dm2 = _module(tmp_path, UNI, MULTI)
    with pytest.raises(TSFormatError, match="dimension"):
        dm2.prepare_data()
    good = _module(tmp_path)
    good.prepare_data()
    first = good.cache_path
    _write(tmp_path, "Tiny_TRAIN.ts", UNI.replace("1,2,3,4:up", "1,2,3,5:up"))
    edited = UCRDataModule(train_file=str(tmp_path / "Tiny_TRAIN.ts"), test_file=str(tmp_path / "Tiny_TEST.ts"),
                           data_dir=tmp_path, val_frac=0.34)
    assert edited.cache_path != first
    assert download.read_cache_meta(first) is not None


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(val_frac=0), "val_frac"), (dict(val_frac=1.2), "val_frac"),
    (dict(normalize="minmax"), "normalize"), (dict(train_file="x.csv", test_file="y.ts"), "train_file"),
    (dict(bucket="yes"), "bucket"),
])
def test_bad_options_are_rejected_in_the_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UCRDataModule(**({"train_file": "a.ts", "test_file": "b.ts"} | kwargs))


def test_missing_files_are_named(tmp_path):
    dm = UCRDataModule(train_file="nope_TRAIN.ts", test_file="nope_TEST.ts", data_dir=tmp_path)
    with pytest.raises(download.DataNotFoundError, match=r"nope_TRAIN\.ts"):
        dm.prepare_data()


@pytest.mark.skipif(importlib.util.find_spec("sktime") is None, reason="sktime (test extra) not installed")
def test_plaid_from_the_installed_sktime(tmp_path):
    dm = PLAIDDataModule(data_dir=tmp_path, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.d_input, dm.num_classes, dm.l_max) == (2, 11, 1344)  # waveform + log amplitude
    assert len(dm.train_set) + len(dm.val_set) == 537 and len(dm.test_set) == 537
    lengths = torch.cat([dm.train_set.lengths, dm.val_set.lengths, dm.test_set.lengths])
    assert int(lengths.min()) == 100 and int(lengths.max()) == 1344
    assert torch.bincount(dm.test_set.y, minlength=11).min() > 0
    with pytest.raises(ValueError, match="train_file is not an option"):
        PLAIDDataModule(train_file="x.ts")
    assert np.isfinite(dm.test_set.x.numpy()).all()


def test_length_buckets_follow_the_epoch_lightning_sets():
    # A resumed run must draw the same batches as an uninterrupted one: the batches depend only on
    # (seed, epoch), which Lightning sets through the loader's sampler before every epoch.
    from torch.utils.data import DataLoader

    from ssmlit.data.ucr import LengthBuckets

    lengths = torch.randint(10, 200, (53,))
    sampler = LengthBuckets(lengths, 8, seed=3)
    loader = DataLoader(torch.arange(53), sampler=sampler, batch_size=8)
    drawn = {}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn[epoch] = [b.tolist() for b in loader]
    assert drawn[0] != drawn[1] != drawn[2]
    fresh = LengthBuckets(lengths, 8, seed=3)
    fresh.set_epoch(2)
    assert [b.tolist() for b in DataLoader(torch.arange(53), sampler=fresh, batch_size=8)] == drawn[2]
    for batches in drawn.values():  # every case once per epoch
        assert sorted(i for b in batches for i in b) == list(range(53))
    sampler.set_epoch(1)
    assert drawn[1] == sampler.batches()
