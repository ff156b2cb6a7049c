"""Compaction during training: optimizer surgery, equivalence with masking, checkpoints, resume, DDP."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ssmlit.data import DigitsDataModule
from ssmlit.models import S4D, S5, SequenceModel
from ssmlit.pruning import StatePruningCallback, apply_pruning, plan_pruning
from ssmlit.study.checkpoint import load_run
from ssmlit.training import SequenceClassifier
from ssmlit.training.surgery import compact_checkpoint, compact_layers, transfer_optimizer_state

ROOT = Path(__file__).resolve().parents[1]


def _model(layer: str, bidirectional: bool, **ssm) -> dict:
    base = dict(d_state=16, blocks=2) if layer == "s5" else dict(d_state=16)
    return dict(d_input=1, d_output=10, layer=layer, d_model=8, n_layers=2,
                ssm=base | dict(bidirectional=bidirectional) | ssm)


# -- the maps compact() and the optimizer surgery share -----------------------------------------------
@pytest.mark.parametrize("make", [lambda: S5(6, 16, blocks=2, bidirectional=True), lambda: S4D(6, 8, n_ssm=2),
                                  lambda: S4D(6, 8, bidirectional=True, trainable_B=False)])
def test_compaction_slices_are_what_compact_applies(make):
    layer = make()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))  # distinct values: a wrong index cannot match
        layer.state_mask.copy_(torch.rand(layer.n_states, generator=g) < 0.5)
        layer.state_mask[0] = True
    new = layer.compact()
    for name, take in layer.compaction_slices().items():
        assert torch.equal(take(getattr(layer, name)), getattr(new, name)), name
    u = torch.randn(2, 20, 6)
    assert torch.allclose(new(u), layer(u), atol=1e-5, rtol=1e-4)


def test_s4d_shared_copies_moments_are_gathered_per_channel():
    # n_ssm = 2 < H = 4: A and B are shared by channels h and h + 2; compaction unties them and each
    # channel's slots must carry the moments of its copy's kept modes (explicit loop as reference).
    torch.manual_seed(0)
    model = SequenceModel(**_model("s4d", False, d_state=8, n_ssm=2) | dict(d_model=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(3, 12, 1), torch.tensor([1, 2, 3])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    layer = model.blocks[0].ssm
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    layer.state_mask.copy_(mask.reshape(-1))
    old_A = layer.A_real
    old_m = opt.state[old_A]["exp_avg"].clone()
    old_step = opt.state[old_A]["step"].clone()
    lrs = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    result = compact_layers(model)
    assert transfer_optimizer_state(opt, result.moves) == len(result.moves)
    new = model.blocks[0].ssm
    assert new.n_ssm == 4 and new.n_modes == 3  # widest channel keeps 3 modes
    m = opt.state[new.A_real]["exp_avg"]
    for h in range(4):
        kept = [n for n in range(4) if mask[h, n]]
        for j, n in enumerate(kept):
            assert m[h, j] == old_m[h % 2, n], (h, j)
    assert torch.equal(opt.state[new.A_real]["step"], old_step)
    assert old_A not in opt.state and all(p in opt.state for g in opt.param_groups for p in g["params"])
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == lrs
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    opt.step()  # the optimizer runs on the new shapes


# -- compact at E ≡ mask at E --------------------------------------------------------------------------
class LossRecorder(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _fit(tmp_path, model, callbacks, max_epochs=3, ckpt_path=None, **trainer_kw):
    pl.seed_everything(0)
    module = SequenceClassifier(model, dict(lr=5e-3, ssm_lr=5e-3, warmup_epochs=0.5, weight_decay=0.05))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=4, limit_val_batches=1,
                         callbacks=callbacks, default_root_dir=tmp_path, **trainer_kw)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer, module


@pytest.mark.parametrize("layer,bidirectional", [("s5", False), ("s5", True), ("s4d", False), ("s4d", True)])
def test_compacting_at_epoch_equals_masking_at_epoch(tmp_path, layer, bidirectional):
    runs = {}
    for compact in (False, True):
        rec = LossRecorder()
        pruner = StatePruningCallback("last", 0.5, epoch=1, compact=compact, plots=False, verbose=0)
        trainer, module = _fit(tmp_path / str(compact), _model(layer, bidirectional), [pruner, rec],
                               enable_checkpointing=False)
        runs[compact] = rec.losses, module, trainer
    (masked, m_module, _), (compacted, c_module, c_trainer) = runs[False], runs[True]
    assert len(masked) == len(compacted) == 12
    assert masked[:4] == compacted[:4]  # epoch 0: nothing pruned yet, bit-identical
    assert masked[4:] == pytest.approx(compacted[4:], rel=2e-4, abs=2e-5)
    assert masked[4:] != pytest.approx(masked[:4] * 2, rel=1e-3)  # the model did train on
    small = [s.n_states for s in c_module.model.ssm_layers()]
    big = [s.n_states for s in m_module.model.ssm_layers()]
    assert sum(small) < sum(big) and sum(s.n_active for s in c_module.model.ssm_layers()) == sum(big) // 2
    # the optimizer follows the new parameters: same objects, state shaped like them
    opt = c_trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in c_module.parameters()}
    assert all(opt.state[p]["exp_avg"].shape == p.shape for g in opt.param_groups for p in g["params"])
    # hyper-parameters carry the compacted per-layer shapes
    assert [c["d_state"] for c in c_module.hparams["model"]["ssm"]] == [s.d_state for s in c_module.model.ssm_layers()]


def test_optimizer_history_survives_compaction(tmp_path):
    # Against a run whose optimizer is rebuilt from scratch at the same point (the failure mode the
    # surgery prevents): the losses after compaction must differ from that one, and match masking.
    class ResetOptimizer(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                for opt in trainer.optimizers:
                    opt.state.clear()

    losses = {}
    for name, extra in (("masked", []), ("reset", [ResetOptimizer()])):
        rec = LossRecorder()
        pruner = StatePruningCallback("last", 0.5, epoch=1, compact=name == "reset", plots=False, verbose=0)
        _fit(tmp_path / name, _model("s5", False), [pruner, *extra, rec], max_epochs=2, enable_checkpointing=False)
        losses[name] = rec.losses
    assert losses["masked"][4:] != pytest.approx(losses["reset"][4:], rel=2e-4, abs=2e-5)


# -- checkpoints, resume, sweep -----------------------------------------------------------------------
def _every_epoch(folder):
    return ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1, filename="{epoch}", save_last=True)


def test_compacted_checkpoints_load_resume_and_sweep(tmp_path):
    model = _model("s4d", True)
    pruner = StatePruningCallback("last", 0.5, schedule="iterative", epochs=[1, 2], ratios=[0.25, 0.5],
                                  plots=False, verbose=0)
    _, ref = _fit(tmp_path / "a", model, [pruner, _every_epoch(tmp_path / "a")])
    assert [h["kept_total"] for h in pruner.history] == [96, 64]  # of 128 original: totals survive compaction
    ckpt = tmp_path / "a" / "epoch=1.ckpt"  # written after the first compaction
    loaded = SequenceClassifier.load_from_checkpoint(ckpt, weights_only=True)
    assert sum(s.n_active for s in loaded.model.ssm_layers()) == 96
    last = SequenceClassifier.load_from_checkpoint(tmp_path / "a" / "last.ckpt", weights_only=True)
    assert [s.n_states for s in last.model.ssm_layers()] == [s.n_states for s in ref.model.ssm_layers()]
    for a, b in zip(last.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)

    # resume= from the compacted epoch-1 checkpoint: shapes rebuilt before weights and optimizer load
    seen = {}

    class Probe(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            seen[trainer.current_epoch] = (
                [s.n_states for s in pl_module.model.ssm_layers()],
                all(float(opt.state[p]["exp_avg"].abs().sum()) > 0 for p in pl_module.model.blocks[0].ssm.parameters()),
            )

    resumed = StatePruningCallback("last", 0.5, schedule="iterative", epochs=[1, 2], ratios=[0.25, 0.5],
                                   plots=False, verbose=0)
    _, module = _fit(tmp_path / "b", model, [resumed, Probe()], ckpt_path=str(ckpt), enable_checkpointing=False)
    assert resumed.done == [1, 2] and [h["epoch"] for h in resumed.history] == [1, 2]
    assert seen[2][1]  # the AdamW moments came back with the compacted shapes
    assert sum(s.n_active for s in module.model.ssm_layers()) == 64
    assert [s.n_states for s in module.model.ssm_layers()] == [s.n_states for s in ref.model.ssm_layers()]

    # the sweep's loader accepts the compacted checkpoint
    cfg = tmp_path / "train.yaml"
    cfg.write_text("task:\n  _target_: ssmlit.data.DigitsDataModule\n")
    run = load_run(ckpt, train_config=str(cfg))
    plan = plan_pruning(run.module, "last", 0.6)
    apply_pruning(run.module, plan)
    assert run.module(torch.randn(2, 64, 1)).shape == (2, 10)


def test_compact_at_end_rewrites_checkpoints_that_still_resume(tmp_path):
    model = _model("s5", False)
    pruner = StatePruningCallback("aire", 0.5, epoch=1, compact=False, compact_at_end=True, plots=False, verbose=0)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/acc", mode="max", save_last=True)
    _, module = _fit(tmp_path, model, [pruner, ckpt_cb])
    assert sum(s.n_states for s in module.model.ssm_layers()) == 8  # compacted in memory (16 → 8)
    files = [ckpt_cb.best_model_path, ckpt_cb.last_model_path]
    for f in files:
        raw = torch.load(f, weights_only=True)
        assert sum(raw["state_dict"][f"model.blocks.{i}.ssm.state_mask"].numel() for i in range(2)) == 8, f
        m = SequenceClassifier.load_from_checkpoint(f, weights_only=True)
        assert sum(s.n_states for s in m.model.ssm_layers()) == 8
        opt = m.make_optimizer()
        opt.load_state_dict(raw["optimizer_states"][0])  # moments sliced like the parameters
        assert all(opt.state[p]["exp_avg"].shape == p.shape for g in opt.param_groups for p in g["params"])
    # the rewritten last.ckpt still resumes (optimizer moments match the compacted parameters)
    _fit(tmp_path / "again", model, [], max_epochs=4, ckpt_path=ckpt_cb.last_model_path, enable_checkpointing=False)


def test_compact_checkpoint_slices_optimizer_state_like_the_parameters(tmp_path):
    trainer, module = _fit(tmp_path, _model("s4d", False, n_ssm=2), [], max_epochs=1, enable_checkpointing=False)
    apply_pruning(module, plan_pruning(module, "last", 0.5))
    trainer.save_checkpoint(tmp_path / "masked.ckpt")
    raw = torch.load(tmp_path / "masked.ckpt", weights_only=True)
    ref_opt = trainer.optimizers[0]
    changed = compact_checkpoint(raw)
    assert set(changed) == {f"model.blocks.{i}.ssm" for i in range(2)}
    # the same surgery in memory gives the same optimizer state
    moves = compact_layers(module)
    transfer_optimizer_state(ref_opt, moves.moves)
    ref = ref_opt.state_dict()
    for i, st in ref["state"].items():
        for k, v in st.items():
            assert torch.equal(raw["optimizer_states"][0]["state"][i][k], v), (i, k)
    loaded = SequenceClassifier.load_from_checkpoint(tmp_path / "masked.ckpt", weights_only=True)  # untouched file
    assert loaded.model.blocks[0].ssm.n_ssm == 2


def test_oneshot_after_fit_compact_at_end_saves_pruned_compact_checkpoint(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/acc", mode="max")
    pruner = StatePruningCallback("last", 0.75, compact_at_end=True, plots=False, verbose=1)
    trainer, module = _fit(tmp_path, _model("s5", True), [ckpt_cb, pruner], max_epochs=1, limit_test_batches=1)
    report = pruner.prune_after_fit(trainer, module, DigitsDataModule(batch_size=32))
    path = Path(report["compacted_checkpoint"])
    assert path == tmp_path / "ck" / "pruned.ckpt"
    m = SequenceClassifier.load_from_checkpoint(path, weights_only=True)
    assert sum(s.n_states for s in m.model.ssm_layers()) == report["plan"]["kept_total"] == 4
    with pytest.raises(ValueError, match="compact_at_end"):
        StatePruningCallback("last", 0.5, compact=True)  # nothing trains after the after-fit step


# -- DDP ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_ranks_compact_identically_and_keep_training_in_sync(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_compact_job.py"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["n_states"] == r1["n_states"] and sum(r0["n_states"]) < r0["n_states_before"]
    assert r0["ddp_params"] == r0["module_params"]  # the DDP wrapper holds the compacted parameters
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # training went on after compaction (epochs 1, 2 on different shards, kept equal by all-reduce)
    assert any(not torch.equal(r0["state"][k], r0["after_compaction"][k]) for k in r0["after_compaction"])
