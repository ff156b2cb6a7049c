"""The models package's contract beyond the numerics: every constructor and protocol error message in
full (naming the setting, the bad value and what is allowed), optimizer roles, configs that rebuild
the same layer, the printed summary, and save/load errors. (Added for mutation testing.)"""

import math

import pytest
import torch

from ssmlit.models import S4D, S5, SequenceModel, load_model, save_model
from ssmlit.models.base import check_real_dtype
from ssmlit.models.discretize import discretize
from ssmlit.models.hippo import block_diag_hippo_n, legs_normal_eig, s4d_init
from ssmlit.models.scan import diagonal_scan


def _raises(exc, text, fn, *args, **kw):
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert str(info.value) == text


def test_layer_errors_in_full():
    _raises(ValueError, "unknown discretization 'euler'; choose one of ('zoh', 'bilinear')", S5, 4, 8,
            discretization="euler")
    _raises(ValueError, "unknown C_init 'zeros'; choose one of ('trunc_standard_normal', 'lecun_normal', "
            "'complex_normal')", S5, 4, 8, C_init="zeros")
    _raises(ValueError, "unknown scan algorithm 'magic'; choose one of ['auto', 'lean', 'triton', 'chunked', 'assoc', "
            "'fft', 'sequential']",
            S5, 4, 8, scan="magic")
    for kw, text in ((dict(dt_min=0.0), "dt_min must be a number > 0, got 0.0"),
                     (dict(dt_min=0.2, dt_max=0.1), "dt_min must be <= dt_max, got dt_min=0.2, dt_max=0.1")):
        _raises(ValueError, text, S5, 4, 8, **kw)
        _raises(ValueError, text, S4D, 4, 8, **kw)
    assert S5(4, 8, dt_min=0.05, dt_max=0.05).log_step.exp().allclose(torch.tensor(0.05))  # equal is fine
    assert S4D(4, 8, dt_min=0.05, dt_max=0.05).log_dt.exp().allclose(torch.tensor(0.05))
    _raises(ValueError, "blocks=4 must split d_state=12 into equal blocks of even size (d_state % (2*blocks) "
            "== 0)", S5, 4, 12, blocks=4)
    _raises(ValueError, "unknown discretization 'euler'; choose one of ('zoh', 'bilinear')", S4D, 4, 8,
            discretization="euler")
    _raises(ValueError, "unknown S4D init 'zero'; choose one of ('legs', 'inv', 'lin')", S4D, 4, 8, init="zero")
    _raises(ValueError, "n_ssm=4 must divide d_model=6", S4D, 6, 8, n_ssm=4)
    _raises(ValueError, "n_ssm must be an integer >= 1 or null, got 0", S4D, 6, 8, n_ssm=0)
    _raises(ValueError, "d_state must be even (N/2 conjugate pairs per channel are stored), got 7", S4D, 4, 7)
    _raises(ValueError, "S5 expects input [batch, length, 4], got (2, 3, 5)", S5(4, 8), torch.randn(2, 3, 5))
    _raises(ValueError, "S4D expects input [batch, length, 4], got (3, 4)", S4D(4, 8), torch.randn(3, 4))
    _raises(ValueError, "discretized_system dtype must be torch.complex64 or torch.complex128, got torch.float32",
            check_real_dtype, torch.float32)
    assert check_real_dtype(None) == check_real_dtype(torch.complex64) == (torch.float32, torch.complex64)
    assert check_real_dtype(torch.complex128) == (torch.float64, torch.complex128)
    _raises(ValueError, "unknown discretization 'euler'; choose one of ('zoh', 'bilinear')", discretize,
            torch.ones(2, dtype=torch.complex64), torch.ones(2), "euler")
    _raises(ValueError, "unknown scan algorithm 'loop'; choose one of ['assoc', 'chunked', 'fft', 'sequential']",
            diagonal_scan, torch.zeros(2, dtype=torch.complex64), torch.zeros(2, 1, 3, dtype=torch.complex64), "loop")
    for layer in (S5(4, 8), S4D(2, 4)):
        layer.state_mask.zero_()
        with pytest.raises(ValueError, match=f"cannot compact an {type(layer).__name__} layer whose states are all "
                           "masked; keep at least one"):
            layer.compact()


def test_hippo_errors_in_full():
    _raises(ValueError, "HiPPO-LegS size must be a positive even number (conjugate pairs), got 5", legs_normal_eig, 5)
    _raises(ValueError, "HiPPO-LegS size must be a positive even number (conjugate pairs), got 0", legs_normal_eig, 0)
    _raises(ValueError, "unknown S4D init 'x'; choose one of 'lin', 'inv', 'legs'", s4d_init, "x", 4)
    _raises(ValueError, "S5 d_state=8 must split into blocks=0 equal blocks of even size (d_state % (2*blocks) == 0)",
            block_diag_hippo_n, 8, 0)
    _raises(ValueError, "S5 d_state=8 must split into blocks=3 equal blocks of even size (d_state % (2*blocks) == 0)",
            block_diag_hippo_n, 8, 3)


def test_param_roles_config_and_repr():
    s5 = S5(4, 8, blocks=2, bidirectional=True, discretization="bilinear", C_init="lecun_normal", dt_min=0.01,
            dt_max=0.2, clip_eigs=True, step_rescale=2.0, scan="fft", chunk_size=16)
    assert s5.param_roles() == {"Lambda_re": "A", "Lambda_im": "A", "B": "B", "C": "C", "D": "D", "log_step": "dt"}
    assert set(s5.param_roles()) == {n for n, _ in s5.named_parameters()}
    cfg = s5.config()
    assert cfg == dict(d_model=4, d_state=8, blocks=2, bidirectional=True, discretization="bilinear",
                       C_init="lecun_normal", dt_min=0.01, dt_max=0.2, clip_eigs=True, step_rescale=2.0, scan="fft",
                       chunk_size=16)
    assert S5(**cfg).config() == cfg
    s5.state_mask[1] = False
    assert s5.extra_repr() == ("d_model=4, d_state=8 (P=4 stored, 3 active), blocks=2, bidirectional=True, "
                               "discretization=bilinear, scan=fft")
    s4d = S4D(4, 8, bidirectional=True, discretization="bilinear", init="lin", dt_min=0.01, dt_max=0.2, n_ssm=2,
              trainable_B=False, step_rescale=0.5)
    assert s4d.param_roles() == {"A_real": "A", "A_imag": "A", "C": "C", "D": "D", "log_dt": "dt"}
    assert set(s4d.param_roles()) == {n for n, _ in s4d.named_parameters()} and "B" in dict(s4d.named_buffers())
    assert S4D(4, 8).param_roles()["B"] == "B"
    cfg = s4d.config()
    assert cfg == dict(d_model=4, d_state=8, bidirectional=True, discretization="bilinear", init="lin", dt_min=0.01,
                       dt_max=0.2, n_ssm=2, trainable_B=False, step_rescale=0.5, bidirectional_convention="s5",
                       l_max=None, imag_init_min=0.0)
    assert S4D(**cfg).config() == cfg
    s4d.state_mask[:3] = False
    assert s4d.n_modes == 4 and s4d.n_states == 16 and s4d.n_active == 13
    assert s4d.extra_repr() == ("d_model=4, d_state=8 (4 modes/channel, 13/16 active), n_ssm=2, init=lin, "
                                "bidirectional=True (s5 convention), discretization=bilinear")
    # step_rescale defaults to the constructor's value, and a per-call value does not stick
    for layer in (s5, s4d):
        lam_default = layer.discretized_system(torch.complex128)[0]
        assert torch.equal(lam_default, layer.discretized_system(torch.complex128, layer.step_rescale)[0])
        assert not torch.allclose(lam_default, layer.discretized_system(torch.complex128, step_rescale=1.0)[0])
        u = torch.randn(1, 20, 4)
        assert torch.allclose(layer(u), layer(u, step_rescale=layer.step_rescale))
        assert not torch.allclose(layer(u), layer(u, step_rescale=1.0))


def test_init_ranges():
    torch.manual_seed(3)
    s4d = S4D(64, 8, dt_min=1e-3, dt_max=1e-1)
    dt = s4d.log_dt.exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    # log-uniform: the mean of log Δ sits halfway between the logs of the bounds
    assert abs(float(s4d.log_dt.detach().mean()) - (math.log(1e-3) + math.log(1e-1)) / 2) < 0.4
    assert s4d.D.shape == (64,) and s4d.C.shape == (1, 64, 4, 2) and s4d.B.shape == (64, 4, 2)
    assert abs(float(s4d.C.detach().std()) - math.sqrt(0.5)) < 0.1  # complex normal: variance ½ per part
    A, B = s4d_init("legs", 8)
    assert torch.allclose(-torch.exp(s4d.A_real[5]), A.real.float()) and torch.allclose(-s4d.A_imag[5], A.imag.float())
    assert torch.allclose(torch.view_as_complex(s4d.B[5].contiguous()), B.to(torch.complex64))


def test_save_load_errors(tmp_path):
    _raises(FileNotFoundError, f"no model file at {tmp_path / 'none.pt'}", load_model, tmp_path / "none.pt")
    torch.save({"config": {}}, tmp_path / "bad.pt")
    _raises(ValueError, f"{tmp_path / 'bad.pt'} is not a model saved by ssmlit.models.save_model (expected keys "
            "config, state_dict)", load_model, tmp_path / "bad.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="is not a model saved by"):
        load_model(tmp_path / "list.pt")
    model = SequenceModel(3, d_input=2, d_model=4, n_layers=1, ssm=dict(d_state=4))
    save_model(model, tmp_path / "ok.pt")
    assert load_model(tmp_path / "ok.pt").config() == model.config()


def test_backbone_errors_in_full():
    _raises(ValueError, "set exactly one of d_input (real-valued inputs) and vocab_size (tokens); got d_input=None, "
            "vocab_size=None", SequenceModel, 2)
    _raises(ValueError, "unknown layer 's6'; choose one of ['s4d', 's5']", SequenceModel, 2, d_input=1, layer="s6")
    _raises(ValueError, "unknown pooling 'max'; choose one of ('mean', 'last')", SequenceModel, 2, d_input=1,
            pooling="max")
    _raises(ValueError, "n_layers must be an integer >= 1, got 0", SequenceModel, 2, d_input=1, n_layers=0)
    _raises(ValueError, "ssm lists 1 layer configs but n_layers=2", SequenceModel, 2, d_input=1, n_layers=2,
            ssm=[dict(d_state=4)])
    model = SequenceModel(2, d_input=1, d_model=4, n_layers=1, ssm=dict(d_state=4))
    _raises(ValueError, "lengths must lie in [1, 5] (the padded length), got [0, 3]", model, torch.randn(2, 5, 1),
            torch.tensor([0, 3]))
    _raises(ValueError, "lengths must lie in [1, 5] (the padded length), got [2, 6]", model, torch.randn(2, 5, 1),
            torch.tensor([2, 6]))
    assert model(torch.randn(2, 5, 1), torch.tensor([1, 5])).shape == (2, 2)
