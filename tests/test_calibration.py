"""Data-aware state energies against a float64 sequential reference of each state's own output term,
over valid steps only, uni- and bidirectional, S5 (MIMO) and S4D (one channel per state)."""

import math

import pytest
import torch
from torch import nn

from ssmlit.data import DigitsDataModule
from ssmlit.models import S4D, S5, SequenceModel
from ssmlit.pruning import plan_pruning, state_scores
from ssmlit.pruning.calibration import calibrate, calibration_batches, check_calibration_batches
from ssmlit.pruning.scores import energy_normalize


class Bare(nn.Module):
    """One SSM layer as a model: ``model(x, lengths)`` zeroes the padding and applies the layer."""

    def __init__(self, layer):
        super().__init__()
        self.ssm = layer

    def forward(self, x, lengths=None, step_rescale=None):
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        return self.ssm(x * valid[..., None], step_rescale)


def _reference_energies(layer, u, lengths):
    """E_i = Σ_b Σ_{k<len_b} ‖2·Re(C^f_i x^f_{i,k} + C^b_i x^b_{i,k})‖², with the recurrences run
    state by state in complex128 from discretized_system()."""
    lam, B, C = layer.discretized_system(torch.complex128)
    u = u.double()
    Bsz, L, _ = u.shape
    E = torch.zeros(lam.numel(), dtype=torch.float64)
    for i in range(lam.numel()):
        drive = (u.to(torch.complex128) @ B[i])  # [B, L]
        for b in range(Bsz):
            n = int(lengths[b])
            d = drive[b].clone()
            d[n:] = 0  # padding is zero
            fwd, bwd, x = [], [0j] * L, 0j
            for k in range(L):
                x = lam[i] * x + d[k]
                fwd.append(x)
            x = 0j
            for k in reversed(range(L)):
                x = lam[i] * x + d[k]
                bwd[k] = x
            y = 2 * (C[0][:, i][None, :] * torch.tensor(fwd)[:, None]).real
            if C.shape[0] == 2:
                y = y + 2 * (C[1][:, i][None, :] * torch.tensor(bwd)[:, None]).real
            E[i] += y[:n].square().sum()
    return E


@pytest.mark.parametrize("make", [lambda: S5(3, 8, blocks=2), lambda: S5(3, 8, blocks=2, bidirectional=True),
                                  lambda: S4D(2, 6), lambda: S4D(2, 6, bidirectional=True)])
def test_energies_equal_the_sequential_reference_over_valid_steps(make):
    torch.manual_seed(0)
    layer = make().eval()
    with torch.no_grad():  # a slow and a fast pole, so the forward tail past the end matters
        if isinstance(layer, S5):
            layer.Lambda_re[:2] = torch.tensor([-1e-3, -3.0])
            layer.log_step.fill_(math.log(0.05))
    x = torch.randn(3, 11, layer.d_model)
    lengths = torch.tensor([11, 4, 7])
    got = calibrate(Bare(layer), [(x, torch.zeros(3, dtype=torch.long), lengths)])["ssm"]
    want = _reference_energies(layer, x, lengths)
    assert torch.allclose(got, want, rtol=2e-5, atol=1e-9 * float(want.max()))


def test_batches_accumulate_and_are_deterministic():
    torch.manual_seed(1)
    model = SequenceModel(d_output=10, d_input=1, d_model=8, n_layers=2, ssm=dict(d_state=8, blocks=2))
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    b1 = calibration_batches(dm, 3, seed=5)
    b2 = calibration_batches(dm, 3, seed=5)
    assert len(b1) == 3 and all(torch.equal(x1, x2) for (x1, _, _), (x2, _, _) in zip(b1, b2))
    assert not torch.equal(b1[0][0], calibration_batches(dm, 1, seed=6)[0][0])
    model.train()
    e_all = calibrate(model, b1)
    assert model.training  # the mode is restored
    parts = [calibrate(model, [b]) for b in b1]
    for k in e_all:
        assert torch.allclose(e_all[k], sum(p[k] for p in parts), rtol=1e-10)
        assert torch.equal(e_all[k], calibrate(model, b2)[k])


def test_data_energy_method_ranks_by_measured_energy():
    torch.manual_seed(2)
    model = SequenceModel(d_output=10, d_input=1, d_model=8, n_layers=2, ssm=dict(d_state=16, blocks=2)).eval()
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    energies = calibrate(model, calibration_batches(dm, 2))
    scores = state_scores(model, "data_energy", calibration=energies)
    for k in scores:
        assert torch.equal(scores[k], energy_normalize(energies[k]))
    plan = plan_pruning(model, "data_energy", 0.5, calibration=energies)
    assert sum(plan.kept.values()) == 8
    # Within each layer the kept states are the highest-energy ones (normalization keeps the order).
    for k, mask in plan.masks.items():
        if 0 < mask.sum() < mask.numel():
            assert energies[k][mask].min() >= energies[k][~mask].max()
    with pytest.raises(ValueError, match="calibration"):
        plan_pruning(model, "data_energy", 0.5)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_bad_calibration_batch_counts(bad):
    with pytest.raises(ValueError, match="calibration_batches"):
        check_calibration_batches(bad)


class Rated(Bare):
    """``Bare`` that runs its layer at a fixed Δ multiplier, passed positionally as a caller would."""

    def __init__(self, layer, rate):
        super().__init__(layer)
        self.rate = rate

    def forward(self, x, lengths=None):
        return super().forward(x, lengths, self.rate)


@pytest.mark.parametrize("how", ["layer attribute", "call argument"])
def test_energies_are_measured_at_the_rate_the_layer_runs(how):
    # data_energy's scores take no step_rescale: the rate acts through the forward passes, so the
    # energies must be those of the system discretized at the rate the layer actually ran at.
    torch.manual_seed(3)
    layer = S5(3, 8, blocks=2, bidirectional=True).eval()
    x, lengths = torch.randn(2, 9, 3), torch.tensor([9, 6])
    batch = [(x, torch.zeros(2, dtype=torch.long), lengths)]
    at_one = calibrate(Bare(layer), batch)["ssm"]
    if how == "layer attribute":
        layer.step_rescale = 2.5
        got = calibrate(Bare(layer), batch)["ssm"]
    else:
        got = calibrate(Rated(layer, 2.5), batch)["ssm"]
        layer.step_rescale = 2.5  # only for the reference's discretized_system()
    want = _reference_energies(layer, x, lengths)
    assert torch.allclose(got, want, rtol=2e-5, atol=1e-9 * float(want.max()))
    assert not torch.allclose(got, at_one, rtol=1e-2)


def test_an_overflowing_unstable_state_measures_infinite_energy():
    # |λ̄| > 1 makes one trajectory overflow float32 on a long input; its moments then hold
    # inf − inf = NaN. A NaN energy would make every Eq. 9 prefix sum of the layer NaN (all its
    # scores 0); the state has unbounded energy, so it must measure +inf (never pruned, as the
    # computed scores treat unstable poles), and the other states keep their own energies.
    torch.manual_seed(0)
    layer = S5(4, 16, blocks=2, bidirectional=True).eval()
    x, lengths = torch.randn(2, 300, 4), torch.tensor([300, 300])
    batch = [(x, torch.zeros(2, dtype=torch.long), lengths)]
    stable = calibrate(Bare(layer), batch)["ssm"]
    with torch.no_grad():
        layer.Lambda_re[2] = 30.0
        layer.log_step[2] = math.log(0.1)  # |λ̄| = e³: float32 overflows within ~30 steps
    with pytest.warns(RuntimeWarning, match="unstable"):
        got = calibrate(Bare(layer), batch)["ssm"]
    assert got[2] == math.inf
    others = torch.arange(layer.n_states) != 2
    assert torch.equal(got[others], stable[others])
    scores = state_scores(Bare(layer), "data_energy", calibration={"ssm": got})["ssm"]
    assert scores[2] == 1.0 and scores[others].max() == 1.0 and (scores[others] > 0).all()
