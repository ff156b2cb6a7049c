"""convention="reference" against an independent implementation of the published code's rules, as
issue 11 states them: 1e-8 in the denominators, float32 throughout, max(⌊N(1 − r)⌋, 1) kept, every
state ≥ the threshold kept (ties survive), normalization by an ascending stable sort, and the
(‖C1‖ + ‖C2‖)/4 bidirectional factor; on uni- and bidirectional models with slow poles and exact ties."""

import math

import numpy as np
import pytest
import torch

from ssmlit.models import S5, SequenceModel
from ssmlit.pruning import plan_pruning, prunable_layers, state_scores
from ssmlit.pruning.reference import reference_keep_count, reference_normalize

F32 = np.float32


def _model(bidirectional: bool, seed: int = 0) -> SequenceModel:
    """3 S5 layers × 16 stored states (N = 48) with slow poles (Re λ down to −1e-6: |λ̄| rounds to 1
    in float32), and exact ties: in every layer state 5 is a copy of state 2 and state 9 of state 1."""
    torch.manual_seed(seed)
    model = SequenceModel(d_output=3, d_input=1, d_model=6, n_layers=3,
                          ssm=dict(d_state=32, blocks=4, bidirectional=bidirectional)).eval()
    with torch.no_grad():
        for i, layer in enumerate(prunable_layers(model).values()):
            P = layer.n_states
            layer.Lambda_re[:6] = -torch.logspace(-6, -3, 6) * (1 + i)
            layer.log_step[:6] = math.log(1e-3)
            for dst, src in ((5, 2), (9, 1)):
                for name in ("Lambda_re", "Lambda_im", "log_step"):
                    getattr(layer, name)[dst] = getattr(layer, name)[src]
                layer.B[dst] = layer.B[src]
                layer.C[:, :, dst] = layer.C[:, :, src]
            assert P == 16
    return model


def _published_scores(layer, kind: str) -> np.ndarray:
    """The published formulas in float32, written out with numpy."""
    lam, B, C = (t.detach().numpy() for t in layer.discretized_system(torch.complex64))
    def sum_sq(rows):  # Σ over channels, in channel order, float32
        acc = np.zeros(rows.shape[1], F32)
        for r in rows:
            acc = (acc + (r.real * r.real + r.imag * r.imag)).astype(F32)
        return acc

    b_sq = sum_sq(B.T)
    c_norm = np.stack([np.sqrt(sum_sq(C[k])) for k in range(C.shape[0])])  # [d, n]
    c = c_norm[0] ** 2 if c_norm.shape[0] == 1 else (c_norm[0] + c_norm[1]) / F32(2) ** 2
    a = np.sqrt(lam.real * lam.real + lam.imag * lam.imag).astype(F32)
    den = (F32(1) - a) ** 2 + F32(1e-8) if kind == "hinf" else (F32(1) - a * a) + F32(1e-8)
    return (c * b_sq / den).astype(F32)


def _published_normalize(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="stable")  # ascending; equal scores keep index order
    out = np.empty_like(s)
    running = F32(0)
    for j in order[::-1]:  # from the largest down: score / (itself + every larger one)
        running = F32(running + s[j])
        out[j] = F32(s[j] / running)
    return out


def _published_masks(model, kind: str, normalize: bool, percent: int) -> dict[str, np.ndarray]:
    scores = {}
    for name, layer in prunable_layers(model).items():
        s = _published_scores(layer, kind)
        scores[name] = _published_normalize(s) if normalize else s
    flat = np.concatenate(list(scores.values()))
    keep = max(int(len(flat) * (100 - percent) / 100), 1)
    tau = np.sort(flat)[::-1][keep - 1]
    return {name: s >= tau for name, s in scores.items()}


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("method,kind,normalize", [("last", "hinf", True), ("aire", "aire", True),
                                                    ("global_hinf", "hinf", False)])
def test_reference_masks_equal_an_independent_implementation(bidirectional, method, kind, normalize):
    for seed in (0, 1):
        model = _model(bidirectional, seed)
        for percent in range(0, 101, 5):
            plan = plan_pruning(model, method, percent / 100, convention="reference")
            want = _published_masks(model, kind, normalize, percent)
            for name in want:
                assert np.array_equal(plan.masks[name].numpy(), want[name]), (seed, percent, name)
            assert plan.convention == "reference" and plan.options["bidirectional"] == "code"


REFERENCE_METHODS = [("last", "hinf", True), ("aire", "aire", True), ("global_hinf", "hinf", False)]


def _pre_prune(model) -> None:
    """Mask states 3, 5 (one of a tied pair) and 12 of every layer, as an earlier pruning step would."""
    for layer in prunable_layers(model).values():
        layer.state_mask[[3, 5, 12]] = False


@pytest.mark.parametrize("masked", [False, True], ids=["full", "partly-pruned"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("method,kind,normalize", REFERENCE_METHODS)
def test_reference_scores_are_the_published_float32_values(method, kind, normalize, bidirectional, masked):
    model = _model(bidirectional)
    if masked:  # masked states leave the normalization and score −inf, as in ssmlit's own convention
        _pre_prune(model)
    # rule 3: the published bidirectional factor, whatever bidirectional= asks for
    ours = state_scores(model, method, convention="reference", bidirectional="bound")
    for name, layer in prunable_layers(model).items():
        raw, active = _published_scores(layer, kind), layer.state_mask.numpy()
        want = np.full(raw.shape, -np.inf, F32)
        want[active] = _published_normalize(raw[active]) if normalize else raw[active]
        assert np.array_equal(ours[name].numpy().astype(F32), want), name
        assert ours[name].dtype == torch.float64  # float32 values, exactly representable
    if masked:  # cumulative: K still counts every stored state, masked states stay masked
        for percent in (20, 50, 90):
            plan = plan_pruning(model, method, percent / 100, convention="reference")
            flat = np.concatenate([ours[k].numpy() for k in ours]).astype(F32)
            keep = max(int(flat.size * (100 - percent) / 100), 1)
            finite = np.sort(flat[np.isfinite(flat)])[::-1]
            tau = finite[min(keep, finite.size) - 1]
            for name, layer in prunable_layers(model).items():
                want_mask = (ours[name].numpy().astype(F32) >= tau) & layer.state_mask.numpy()
                assert np.array_equal(plan.masks[name].numpy(), want_mask), (percent, name)


@pytest.mark.parametrize("method,kind,normalize", REFERENCE_METHODS)
def test_reference_scores_use_the_requested_step_rescale(method, kind, normalize):
    model = _model(True)
    ours = state_scores(model, method, convention="reference", step_rescale=2.5)
    default = state_scores(model, method, convention="reference")
    for name, layer in prunable_layers(model).items():
        layer.step_rescale = 2.5
        raw = _published_scores(layer, kind)
        want = _published_normalize(raw) if normalize else raw
        assert np.array_equal(ours[name].numpy().astype(F32), want), name
        assert not torch.equal(ours[name], default[name])


def test_rules_one_by_one():
    # Kept count rounds down: N = 48 at 30 % keeps 33 (ssmlit keeps 48 − round(14.4) = 34).
    assert reference_keep_count(48, 0.3) == 33 and reference_keep_count(128, 0.9) == 12
    assert reference_keep_count(100, 0.3) == 70  # not ⌊100 · 0.7⌋ = 69 in binary floating point
    assert reference_keep_count(48, 1.0) == 1
    # Normalization: among equal raw scores the higher index gets the larger value.
    out = reference_normalize(torch.tensor([2.0, 2.0, 1.0]))
    assert out.tolist() == [0.5, 1.0, float(F32(1) / F32(5))]
    assert out.dtype == torch.float32
    model = _model(False)
    ours = plan_pruning(model, "last", 0.3, convention="reference")
    own = plan_pruning(model, "last", 0.3)
    assert sum(own.kept.values()) == 34
    # Ties at the threshold survive together; every layer's top scores 1.0 exactly.
    at_full = plan_pruning(model, "last", 1.0, convention="reference")
    assert at_full.kept == {k: 1 for k in at_full.kept}
    assert sum(ours.kept.values()) >= 33
    # The duplicated states (exact ties) are ordered the published way: the copy (higher index) first.
    s = state_scores(model, "last", convention="reference")
    for v in s.values():
        assert v[5] > v[2] and v[9] > v[1]


def test_reference_raw_scores_are_capped_by_the_epsilon():
    # A pole with 1 − |λ̄| ≈ 1e-9: Eq. 6 in float64 is ~1e18·‖C‖²‖B̄‖²; the published 1e-8 caps it at 1e8·….
    layer = S5(2, 4).requires_grad_(False)
    with torch.no_grad():
        layer.Lambda_re.fill_(-1e-6)
        layer.log_step.fill_(math.log(1e-3))
    model = torch.nn.Sequential(layer)
    ref = state_scores(model, "global_hinf", convention="reference")["0"]
    own = state_scores(model, "global_hinf")["0"]
    assert (own / ref > 1e6).all()


def test_reference_rejects_what_the_published_code_does_not_have():
    model = _model(False)
    for method in ("uniform_hinf", "random", "last_horizon", "data_energy", "lamp"):
        with pytest.raises(ValueError, match="reference"):
            plan_pruning(model, method, 0.5, convention="reference")
    with pytest.raises(ValueError, match="min_states"):
        plan_pruning(model, "last", 0.5, min_states=2, convention="reference")
    with pytest.raises(ValueError, match="convention"):
        plan_pruning(model, "last", 0.5, convention="published")


def test_reference_convention_prunes_the_final_epochs_weights_by_default():
    from ssmlit.pruning import StatePruningCallback

    assert StatePruningCallback("last", 0.3, convention="reference").checkpoint == "last"
    assert StatePruningCallback("last", 0.3).checkpoint == "best"
    assert StatePruningCallback("last", 0.3, convention="reference", checkpoint="best").checkpoint == "best"
