"""The optimizer layouts of the reference runs (issue 12): Δ at the main lr without decay (s4 v3),
a separate C lr (s4's scalar layer lr), S5's decay of norms/biases and S5's schedule tail."""

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ssmlit.data import DigitsDataModule
from ssmlit.models import SequenceModel
from ssmlit.training import SequenceClassifier, param_groups, s5_warmup_cosine, warmup_cosine


def _placement(model, **kw):
    """{parameter name: (lr, weight_decay)} of the groups ``param_groups`` builds."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in param_groups(model, lr=1e-2, ssm_lr=1e-3, weight_decay=0.1, **kw):
        for p in g["params"]:
            assert names[id(p)] not in out  # every parameter in exactly one group
            out[names[id(p)]] = (g["lr"], g["weight_decay"])
    assert set(out) == set(names.values())
    return out


def test_s4d_dt_at_main_lr_without_decay():
    model = SequenceModel(3, d_input=2, layer="s4d", d_model=8, n_layers=1, ssm=dict(d_state=8, bidirectional=True))
    default = _placement(model)
    assert default["blocks.0.ssm.log_dt"] == (1e-3, 0.0)  # the SSM group
    s4_v3 = _placement(model, dt_global=True, dt_decay=False)
    assert s4_v3["blocks.0.ssm.log_dt"] == (1e-2, 0.0)  # the main lr, no weight decay
    for name in ("A_real", "A_imag", "B"):
        assert s4_v3[f"blocks.0.ssm.{name}"] == (1e-3, 0.0)
    assert s4_v3["blocks.0.ssm.C"] == s4_v3["blocks.0.ssm.D"] == (1e-2, 0.1)
    assert _placement(model, dt_global=True)["blocks.0.ssm.log_dt"] == (1e-2, 0.1)  # S5's dt_global decays Δ


def test_c_lr_keeps_the_weight_decay_of_cs_group():
    model = SequenceModel(3, d_input=2, layer="s4d", d_model=8, n_layers=1, ssm=dict(d_state=8))
    g = _placement(model, c_lr=5e-4)
    assert g["blocks.0.ssm.C"] == (5e-4, 0.1) and g["blocks.0.ssm.D"] == (1e-2, 0.1)
    assert g["blocks.0.ssm.A_real"] == (1e-3, 0.0)
    s5 = SequenceModel(3, d_input=2, layer="s5", d_model=8, n_layers=1, ssm=dict(d_state=8, blocks=2))
    assert _placement(s5, c_lr=5e-4, opt_config="noBCdecay")["blocks.0.ssm.C"] == (5e-4, 0.0)


def test_decay_norm_bias_decays_norms_biases_and_the_embedding():
    model = SequenceModel(3, vocab_size=10, layer="s5", d_model=8, n_layers=1, ssm=dict(d_state=8, blocks=2))
    ssmlit = _placement(model)
    s5 = _placement(model, decay_norm_bias=True)
    extras = ["encoder.weight", "blocks.0.norm.norm.weight", "blocks.0.norm.norm.bias", "blocks.0.out2.bias",
              "head.bias"]
    for name in extras:
        assert ssmlit[name] == (1e-2, 0.0), name
        assert s5[name] == (1e-2, 0.1), name
    assert s5["blocks.0.ssm.Lambda_re"] == (1e-3, 0.0)  # the SSM group stays undecayed
    assert {k: v for k, v in s5.items() if k not in extras} == {k: v for k, v in ssmlit.items() if k not in extras}


def _s5_reference_lr(step: int, base: float, steps_per_epoch: int, epochs: int, warmup_end: int) -> float:
    # lindermanlab/S5 train.py, per step: linear_warmup(step, lr, spe·warmup_end) in the warmup epochs,
    # then cosine_annealing(step, lr, spe·epochs − spe·warmup_end) with the *global* step counter.
    if step < steps_per_epoch * warmup_end:
        return base * (step + 1) / (steps_per_epoch * warmup_end)
    end = steps_per_epoch * epochs - steps_per_epoch * warmup_end
    return 0.5 * base * (1 + math.cos(math.pi * min(step, end) / end))


def test_s5_schedule_matches_the_reference_rule():
    spe, epochs, warm = 7, 5, 1
    f = s5_warmup_cosine(spe * warm, spe * epochs)
    values = [f(t) for t in range(spe * epochs)]
    assert values == pytest.approx([_s5_reference_lr(t, 1.0, spe, epochs, warm) for t in range(spe * epochs)],
                                   abs=1e-15)
    assert values[spe - 1] == 1.0 and values[spe] < 1.0  # the cosine starts below 1 (global step)
    assert values[-spe:] == [0.0] * spe and values[-spe - 1] > 0  # the last warmup-length trains at 0
    g = warmup_cosine(spe * warm, spe * epochs)
    assert g(spe) == 1.0 and g(spe * epochs - 1) > 0  # ssmlit's default reaches 0 only after the end
    assert [s5_warmup_cosine(0, 20)(t) for t in range(20)] == pytest.approx([warmup_cosine(0, 20)(t) for t in
                                                                            range(20)])


class _LRProbe(Callback):
    def __init__(self):
        self.lrs, self.weights = [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append((trainer.current_epoch, [g["lr"] for g in trainer.optimizers[0].param_groups]))

    def on_train_epoch_start(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_s5_schedule_trains_the_last_epoch_at_lr_zero(tmp_path):
    pl.seed_everything(0)
    model = dict(d_input=1, d_output=10, d_model=8, n_layers=1, ssm=dict(d_state=8, blocks=2), dropout=0.0)
    module = SequenceClassifier(model, dict(lr=1e-2, ssm_lr=1e-3, schedule="s5_cosine", warmup_epochs=1.0))
    probe = _LRProbe()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_train_batches=4,
                         limit_val_batches=0, callbacks=[probe], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64))
    last = [lrs for epoch, lrs in probe.lrs if epoch == 2]
    assert len(last) == 4 and all(lr == 0.0 for lrs in last for lr in lrs)
    assert all(lr > 0 for epoch, lrs in probe.lrs if epoch < 2 for lr in lrs)
    end = module.state_dict()
    weights = {k: v for k, v in probe.weights[2].items() if v.is_floating_point() and "running" not in k}
    assert all(torch.equal(end[k], v) for k, v in weights.items())  # lr 0: AdamW (and its decay) is a no-op


@pytest.mark.parametrize("optim, match", [
    (dict(schedule="s5"), r"schedule must be one of .*'s5'"),
    (dict(dt_decay=False), r"dt_decay=false only applies with optim.dt_global=true"),
    (dict(dt_global=True, dt_decay="no"), r"dt_decay must be true or false, got 'no'"),
    (dict(c_lr=-1.0), r"c_lr must be a number >= 0 or null, got -1.0"),
    (dict(decay_norm_bias=1), r"decay_norm_bias must be true or false, got 1"),
    (dict(opt_config="adam"), r"opt_config must be one of .*'adam'"),
])
def test_new_optim_options_are_validated_in_the_constructor(optim, match):
    model = dict(d_input=1, d_output=10, d_model=8, n_layers=1, ssm=dict(d_state=8, blocks=2))
    with pytest.raises(ValueError, match=match):
        SequenceClassifier(model, optim)
