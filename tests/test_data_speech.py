"""Speech Commands SC35 on a fixture tree: splits, class order, padding, standardisation, 8 kHz."""

import importlib.util
import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from fixtures_data import write_speech

from ssmlit.data import SpeechCommandsDataModule
from ssmlit.data.speech import CLASSES
from ssmlit.training import SequenceClassifier


def test_class_order_is_fixed():
    assert len(CLASSES) == 35 and CLASSES[:3] == ("bed", "cat", "down") and CLASSES[16:18] == ("yes", "backward")
    assert CLASSES[-1] == "zero" and len(set(CLASSES)) == 35


def test_speech_splits_padding_standardisation_and_8khz(tmp_path, monkeypatch):
    clips = write_speech(tmp_path)
    dm = SpeechCommandsDataModule(data_dir=tmp_path, batch_size=3, eval_batch_size=3, prepare_workers=2)
    dm.prepare_data()
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [6, 3, 3]
    folder, meta = dm.load_cache()
    train = np.load(folder / "train_x.npy", mmap_mode="r")
    assert train.dtype == np.int16 and train.shape == (6, 16000)
    # train order: class order then file name; spk01 (test) and spk00 (val) are held out
    expected = [f"{w}/spk{n:02d}_nohash_{n}.wav" for w in ("bed", "cat", "zero") for n in (2, 3)]
    for row, rel in zip(train, expected):
        audio = clips[rel]
        assert np.array_equal(row[: len(audio)], audio) and not row[len(audio):].any()  # zero-padded at the end
    assert np.load(folder / "train_y.npy").tolist() == [0, 0, 1, 1, 34, 34]
    assert np.load(folder / "test_y.npy").tolist() == [0, 1, 34]

    flat = train.astype(np.float64) / 32768
    assert meta["mean"] == pytest.approx(flat.mean(), rel=1e-9) and meta["std"] == pytest.approx(flat.std(ddof=1))
    x, y, lengths = next(iter(dm.test_dataloader()[0]))
    assert x.shape == (3, 16000, 1) and x.dtype == torch.float32 and lengths.tolist() == [16000] * 3
    raw = torch.from_numpy(np.load(folder / "test_x.npy")).float() / 32768
    assert torch.allclose(x[..., 0], (raw - meta["mean"]) / (meta["std"] + 1e-5), atol=1e-6)
    assert y.tolist() == [0, 1, 34]
    assert dm.model_kwargs() == dict(d_input=1, vocab_size=None, d_output=35, retrieval=False)

    # the zero-shot 8 kHz loader: every second sample, evaluated with step_rescale 2
    assert [(v.name, v.step_rescale) for v in dm.test_variants] == [("test", 1.0), ("test_8khz", 2.0)]
    assert [v.name for v in dm.val_variants] == ["val"]
    loaders = dm.test_dataloader()
    x8, y8, l8 = next(iter(loaders[1]))
    assert x8.shape == (3, 8000, 1) and l8.tolist() == [8000] * 3 and torch.equal(x8, x[:, ::2])
    assert torch.equal(y8, y)

    shutil.rmtree(tmp_path / "SpeechCommands")
    monkeypatch.setattr(SpeechCommandsDataModule, "build_cache", lambda *a: pytest.fail("rebuilt the cache"))
    again = SpeechCommandsDataModule(data_dir=tmp_path, val_8khz=True)
    again.prepare_data()
    again.setup()
    assert [v.name for v in again.val_variants] == ["val", "val_8khz"] and again.cache_path == dm.cache_path


def test_speech_8khz_metrics_are_logged(tmp_path):
    write_speech(tmp_path)
    dm = SpeechCommandsDataModule(data_dir=tmp_path, batch_size=3, eval_batch_size=3, eval_8khz=True)
    dm.prepare_data()
    dm.setup()
    module = SequenceClassifier(dict(dm.model_kwargs(), d_model=8, n_layers=1, ssm=dict(d_state=4, blocks=1)),
                                test_variants=[(v.name, v.step_rescale) for v in dm.test_variants])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, limit_test_batches=1)
    metrics = trainer.test(module, datamodule=dm, verbose=False)
    merged = {k: v for m in metrics for k, v in m.items()}
    assert {"test/acc", "test_8khz/acc", "test_8khz/loss"} <= set(merged)
    assert 0 <= merged["test_8khz/acc"] <= 1


@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None, reason="torchaudio is installed")
def test_mfcc_without_torchaudio_is_a_clear_error():
    with pytest.raises(ImportError, match=r"ssmlit\[audio\]"):
        SpeechCommandsDataModule(mfcc=True)
