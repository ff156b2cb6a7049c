"""Speech Commands with the reference normalization of S5/s4 (issue 12, part 5), checked against a
direct float64 computation of the rule from the WAV files."""

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_data import write_speech

from ssmlit.data import SpeechCommandsDataModule
from ssmlit.data.speech import CLASSES


def _reference_rule(root, clips):
    """The S5/s4 rule written out: float audio (soundfile, = torchaudio's int16/2¹⁵), ÷2¹⁵ again,
    zero-padded to 16,000, each time step standardised with the train mean and unbiased std + 1e-5.
    Returns {split: (float64 [N, 16000] in dataset order, labels)}."""
    base = root / "SpeechCommands" / "speech_commands_v0.02"
    val = set((base / "validation_list.txt").read_text().split())
    test = set((base / "testing_list.txt").read_text().split())
    rows = {"train": [], "val": [], "test": []}
    for rel in sorted(clips, key=lambda r: (CLASSES.index(r.split("/")[0]), r)):
        audio, rate = sf.read(base / rel, dtype="float64")
        assert rate == 16000
        padded = np.zeros(16000)
        padded[: len(audio)] = audio / 2 ** 15
        split = "val" if rel in val else "test" if rel in test else "train"
        rows[split].append((padded, CLASSES.index(rel.split("/")[0])))
    train = np.stack([x for x, _ in rows["train"]])
    mean, std = train.mean(0), train.std(0, ddof=1)
    return {s: ((np.stack([x for x, _ in r]) - mean) / (std + 1e-5), [y for _, y in r]) for s, r in rows.items()}


def _batch(dm, dataset):
    return dm.collate([dataset[i] for i in range(len(dataset))])


def test_reference_normalization_matches_a_direct_float64_computation(tmp_path):
    clips = write_speech(tmp_path)
    expected = _reference_rule(tmp_path, clips)
    dm = SpeechCommandsDataModule(data_dir=tmp_path, normalize="reference", prepare_workers=0)
    dm.prepare_data()
    dm.setup()
    for split, dataset in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set)):
        x, y, lengths = _batch(dm, dataset)
        ref, labels = expected[split]
        assert x.shape == (len(ref), 16000, 1) and x.dtype == torch.float32 and y.tolist() == labels
        assert (lengths == 16000).all()
        np.testing.assert_allclose(x[..., 0].double().numpy(), ref, rtol=1e-6, atol=1e-7)
    # the 1e-5 dominates σ_t ≈ 1e-6: standardised, yet far from unit variance
    train_x = _batch(dm, dm.train_set)[0]
    assert 0.05 < float(train_x.std()) < 0.6
    # 8 kHz: normalized at 16 kHz, then every second sample (the reference subsamples after normalizing)
    (variant, ds8), = dm.extra_test_sets
    x8 = _batch(dm, ds8)[0]
    assert variant.step_rescale == 2.0 and x8.shape[1] == 8000
    np.testing.assert_allclose(x8[..., 0].double().numpy(), expected["test"][0][:, ::2], rtol=1e-6, atol=1e-7)


def test_both_normalizations_share_the_waveform_cache(tmp_path):
    write_speech(tmp_path)
    ref = SpeechCommandsDataModule(data_dir=tmp_path, normalize="reference", prepare_workers=0)
    glob = SpeechCommandsDataModule(data_dir=tmp_path, prepare_workers=0)
    assert ref.cache_path == glob.cache_path
    glob.prepare_data()
    glob.setup()
    assert not (glob.cache_path / "step_stats.npy").exists()  # only built when asked for
    x_global = _batch(glob, glob.train_set)[0]
    assert float(x_global.std()) == pytest.approx(1.0, abs=0.05)  # global: unit variance
    ref.prepare_data()  # the existing cache gains the per-step statistics, atomically
    ref.setup()
    stats = np.load(ref.cache_path / "step_stats.npy")
    assert stats.shape == (2, 16000) and stats.dtype == np.float64
    assert not torch.allclose(_batch(ref, ref.train_set)[0], x_global)


def test_normalize_is_validated_in_the_constructor():
    with pytest.raises(ValueError, match=r"unknown Speech Commands normalize 'per_step'; choose one of "
                                         r"\('global', 'reference'\)"):
        SpeechCommandsDataModule(normalize="per_step")
