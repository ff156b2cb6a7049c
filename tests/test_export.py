"""Portable streaming export: ONNX (onnxruntime) and torch.export files against model.step on real
digits sequences, run without ssmlit; the CLI's input errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ssmlit.export.core as export_core
from ssmlit.export import ExportCheckError, ExportInputError, OnnxStream, export_streaming
from ssmlit.export.__main__ import run_export
from ssmlit.study.checkpoint import save_compact_checkpoint
from ssmlit.training import SequenceClassifier

from stream_fixtures import trained_digits

ROOT = Path(__file__).resolve().parents[1]


def step_logits(model, x, frame):
    """model.step frame by frame: logits after every frame, [frames, B, C]."""
    state, out = model.init_state(x.shape[0]), []
    for t in range(0, x.shape[1], frame):
        logits, state = model.step(x[:, t:t + frame], state)
        out.append(logits)
    return torch.stack(out).numpy()


def run_file(runner, x, frame, state):
    out = []
    for t in range(0, x.shape[1], frame):
        logits, state = runner(np.ascontiguousarray(x[:, t:t + frame]), state)
        out.append(logits)
    return np.stack(out)


def save_checkpoint(model, path):
    module = SequenceClassifier(model.config())
    module.model.load_state_dict(model.state_dict())
    save_compact_checkpoint(module, path, OmegaConf.create({"task": {"_target_": "ssmlit.data.DigitsDataModule"}}))
    return path


def compose_export(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="export", overrides=list(overrides))


def test_onnx_step_function_matches_model_step_on_digits(tmp_path):
    """The exported one-step function, run by onnxruntime over the 270 test digits step by step,
    gives model.step's logits after every step and the same predictions."""
    model, x, _ = trained_digits()
    report = export_streaming(model, tmp_path, ["onnx"], frame=1, check_x=x)
    assert report["checks"]["onnx"]["prediction_agreement"] == 1.0
    assert report["checks"]["onnx"]["max_abs_logit_diff"] <= 1e-4
    session = OnnxStream(tmp_path / "stream.onnx")
    assert session.meta["frame"] == 1 and session.inputs == ["x", "state_0", "state_1", "pooled", "count"]
    got = run_file(session, x.numpy(), 1, session.init_state(x.shape[0]))
    ref = step_logits(model, x, 1)
    delta = float(np.abs(got - ref).max())
    print(f"onnxruntime vs model.step, 270 digits × 64 steps: max |Δlogit| = {delta:.2e}")
    assert delta <= 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    with torch.no_grad():
        assert (got[-1].argmax(-1) == model(x).argmax(-1).numpy()).all()
    assert json.loads((tmp_path / "stream.json").read_text())["files"] == {"onnx": "stream.onnx"}


def test_cli_exports_frames_that_run_without_ssmlit(tmp_path):
    """Through the CLI's code path on a checkpoint: both formats at 16-step frames; then a fresh
    interpreter in which ssmlit cannot be imported runs both files on the digits."""
    model, x, _ = trained_digits()
    ckpt = save_checkpoint(model, tmp_path / "model.ckpt")
    report = run_export(compose_export(f"ckpt={ckpt}", "frame=16"))
    out = tmp_path / "stream_model"
    assert sorted(p.name for p in out.iterdir()) == ["stream.json", "stream.onnx", "stream.pt2"]
    assert report["source"] == str(ckpt) and report["frame"] == 16
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["ssmlit"] = None  # any import of ssmlit now fails
        import numpy as np, onnxruntime as ort, torch
        x = np.load({str(tmp_path / "x.npy")!r})
        meta = json.load(open({str(out / "stream.json")!r}))
        def zeros():
            return [np.zeros([x.shape[0]] + s["shape"][1:], dtype=np.float32) for s in meta["state"]]
        sess = ort.InferenceSession({str(out / "stream.onnx")!r}, providers=["CPUExecutionProvider"])
        prog = torch.export.load({str(out / "stream.pt2")!r}).module()
        state_o, state_t = zeros(), tuple(torch.from_numpy(s) for s in zeros())
        names = [i.name for i in sess.get_inputs()]
        outs_o, outs_t = [], []
        for t in range(0, x.shape[1], meta["frame"]):
            frame = np.ascontiguousarray(x[:, t:t + meta["frame"]])
            logits, *state_o = sess.run(None, dict(zip(names, [frame, *state_o])))
            outs_o.append(logits)
            with torch.no_grad():
                logits_t, state_t = prog(torch.from_numpy(frame), state_t)
            outs_t.append(logits_t.numpy())
        np.save({str(tmp_path / "onnx.npy")!r}, np.stack(outs_o))
        np.save({str(tmp_path / "pt2.npy")!r}, np.stack(outs_t))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = step_logits(model, x, 16)
    for name in ("onnx", "pt2"):
        got = np.load(tmp_path / f"{name}.npy")
        assert got.shape == ref.shape == (4, 270, 10)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))
        assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    model, x, _ = trained_digits()
    honest = export_core.to_torch_export

    def off_by_a_bit(stream, meta):
        with torch.no_grad():
            stream.head.bias.add_(0.1)
        return honest(stream, meta)

    monkeypatch.setitem(export_core.BUILDERS, "torch_export", off_by_a_bit)
    with pytest.raises(ExportCheckError, match="torch_export export differs"):
        export_streaming(model, tmp_path / "out", ["torch_export"], frame=8, check_x=x[:8])
    assert not (tmp_path / "out").exists()


def test_bad_input_fails_before_anything_is_written(tmp_path):
    from ssmlit.models import SequenceModel

    bidir = SequenceModel(10, d_input=1, d_model=8, n_layers=1, ssm=dict(d_state=8, bidirectional=True))
    bidir_ckpt = save_checkpoint(bidir, tmp_path / "bidir.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    uni_ckpt = save_checkpoint(SequenceModel(10, d_input=1, d_model=8, n_layers=1, ssm=dict(d_state=8)),
                               tmp_path / "uni.ckpt")
    cases = {
        (f"ckpt={bidir_ckpt}",): "cannot be exported as a stream: layer 0: a bidirectional S5",
        (f"ckpt={junk}",): "unreadable",
        (f"ckpt={tmp_path / 'missing'}",): "not found",
        (f"ckpt={uni_ckpt}", "format=tflite"): "unknown export format 'tflite'",
        (f"ckpt={uni_ckpt}", "frame=0"): "frame must be an integer >= 1",
        (f"ckpt={uni_ckpt}", "step_rescale=-1"): "step_rescale must be a positive number",
        (f"ckpt={uni_ckpt}", "name=../x"): "name must be a plain file stem",
    }
    for overrides, message in cases.items():
        with pytest.raises(ExportInputError, match=message):
            run_export(compose_export(*overrides, f"out_dir={tmp_path / 'out'}"))
        assert not (tmp_path / "out").exists()
    # The CLI itself: one line on stderr, exit code 2.
    proc = subprocess.run([sys.executable, "-m", "ssmlit.export", f"ckpt={bidir_ckpt}", f"out_dir={tmp_path / 'o'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "bidirectional" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
