"""Streaming inference: step-by-step and frame-by-frame recurrences equal the parallel forward."""

import math

import pytest
import torch

from ssmlit.models import S4D, S5, SequenceModel
from ssmlit.models.recurrence import StreamingSSM, default_chunk
from ssmlit.pruning import apply_pruning, compact_model, plan_pruning

from reference import recurrence_output, rel_err
from stream_fixtures import trained_digits

L = 1024
H = 16
# Every configuration that can stream: both discretizations, step_rescale, the S4D copy layout.
CONFIGS = {
    "s5-zoh": ("s5", {}),
    "s5-bilinear": ("s5", dict(discretization="bilinear")),
    "s5-rescale": ("s5", dict(step_rescale=2.0, clip_eigs=True, C_init="complex_normal")),
    "s4d-zoh": ("s4d", {}),
    "s4d-bilinear": ("s4d", dict(discretization="bilinear", init="lin")),
    "s4d-nssm-rescale": ("s4d", dict(n_ssm=2, step_rescale=0.5, trainable_B=False)),
}


def rel_max(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def make_layer(name: str, mode: str):
    kind, kw = CONFIGS[name]
    layer = S5(H, 32, blocks=2, **kw) if kind == "s5" else S4D(H, 16, **kw)
    with torch.no_grad():
        if kind == "s5":
            # Slow poles: |λ̄| within ~1e-6 of 1, memory far beyond L (the hard case for float32).
            layer.Lambda_re[:4] = -torch.logspace(-4, -2, 4)
        else:
            layer.A_real[0, 0] = math.log(1e-3)
    if mode != "full":
        gen = torch.Generator().manual_seed(1)
        layer.state_mask.copy_(torch.rand(layer.n_states, generator=gen) < 0.5)
        layer.state_mask[0] = True
    return layer


def run_steps(stream: StreamingSSM, u: torch.Tensor) -> torch.Tensor:
    x = stream.init_state(u.shape[0])
    ys = []
    for t in range(u.shape[1]):
        y, x = stream(u[:, t:t + 1], x)
        ys.append(y)
    return torch.cat(ys, 1)


@pytest.mark.parametrize("mode", ["full", "masked", "compacted"])
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_layer_step_by_step_equals_forward(name, mode):
    layer = make_layer(name, mode)
    u = torch.randn(2, L, H)
    y = layer(u)  # the parallel forward (masked states contribute nothing)
    target = layer.compact() if mode == "compacted" else layer
    ys = run_steps(target.streaming(1), u)
    assert rel_max(ys, y) <= 1e-4
    assert rel_err(ys, recurrence_output(layer, u)) <= 1e-5  # the float64 sequential recurrence


@pytest.mark.parametrize("name", ["s5-bilinear", "s4d-nssm-rescale"])
@torch.no_grad()
def test_layer_frames_carry_the_state(name):
    """Frames of any length (one step, within one chunk, many chunks with padding, the whole
    sequence) chained through layer.step give the parallel forward."""
    layer = make_layer(name, "masked")
    u = torch.randn(3, L, H)
    y = layer(u)
    sizes = [1, 2, 7, 64, 100, 160, 300, 390]
    assert sum(sizes) == L
    state, ys, t = layer.init_state(3), [], 0
    for T in sizes:
        out, state = layer.step(u[:, t] if T == 1 else u[:, t:t + T], state)
        ys.append(out[:, None] if T == 1 else out)
        t += T
    assert rel_max(torch.cat(ys, 1), y) <= 1e-4
    whole, _ = layer.step(u, layer.init_state(3))
    assert rel_max(whole, y) <= 1e-4
    # step_rescale per call matches the forward's.
    half, _ = layer.step(u[:, :300], layer.init_state(3), step_rescale=0.5)
    assert rel_max(half, layer(u[:, :300], step_rescale=0.5)) <= 1e-4


@pytest.mark.parametrize("chunk", [1, 5, 16, 40])
@torch.no_grad()
def test_frame_scan_any_chunk_length(chunk):
    layer = make_layer("s5-zoh", "full")
    u = torch.randn(2, 80, H)
    stream = layer.streaming(40, chunk=chunk)
    x = stream.init_state(2)
    y1, x = stream(u[:, :40], x)
    y2, _ = stream(u[:, 40:], x)
    assert rel_max(torch.cat((y1, y2), 1), layer(u)) <= 1e-4


def test_streaming_keeps_only_active_states():
    """Per-step cost follows the states kept: the state holds active states only, masked or compacted."""
    s5 = make_layer("s5-zoh", "masked")
    assert s5.init_state(1).shape == (1, s5.n_active, 2) and s5.n_active < s5.n_states
    s4d = make_layer("s4d-zoh", "masked")
    width = int(s4d.state_mask.view(H, -1).sum(1).max())
    assert s4d.init_state(1).shape == (1, H * width, 2) == s4d.compact().init_state(1).shape
    with torch.no_grad():
        u = torch.randn(2, 50, H)
        for layer in (s5, s4d):
            masked, _ = layer.step(u, layer.init_state(2))
            compacted, _ = layer.compact().step(u, layer.init_state(2))
            assert torch.allclose(masked, compacted, atol=1e-6)


def test_streaming_is_a_frozen_copy():
    layer = make_layer("s5-zoh", "full")
    stream = layer.streaming(1)
    u = torch.randn(1, 1, H)
    before, _ = stream(u, stream.init_state(1))
    with torch.no_grad():
        layer.D.add_(1.0)
        layer.Lambda_re.mul_(2.0)
    after, _ = stream(u, stream.init_state(1))
    assert torch.equal(before, after)
    assert not any(True for _ in stream.parameters())


def test_bidirectional_and_retrieval_models_cannot_stream():
    for layer in (S5(8, 8, bidirectional=True), S4D(8, 8, bidirectional=True)):
        with pytest.raises(ValueError, match="bidirectional"):
            layer.init_state(1)
        with pytest.raises(ValueError, match="bidirectional"):
            layer.step(torch.randn(1, 8), torch.zeros(1, 4, 2))
    model = SequenceModel(4, d_input=1, d_model=8, n_layers=2,
                          ssm=[dict(d_state=8), dict(d_state=8, bidirectional=True)])
    with pytest.raises(ValueError, match=r"layer 1: .*bidirectional"):
        model.init_state(1)
    retrieval = SequenceModel(2, vocab_size=10, d_model=8, n_layers=1, ssm=dict(d_state=8), retrieval=True)
    with pytest.raises(ValueError, match="retrieval"):
        retrieval.streaming()


def test_bad_streaming_arguments():
    layer = S5(8, 8)
    for frame in (0, 1.5, True):
        with pytest.raises(ValueError, match="frame"):
            layer.streaming(frame)
    with pytest.raises(ValueError, match="chunk"):
        layer.streaming(10, chunk=11)
    with pytest.raises(ValueError, match=r"\[batch, 8\]"):
        layer.step(torch.randn(2, 3, 5), layer.init_state(2))
    stream = layer.streaming(4)
    with pytest.raises(ValueError, match=r"frames \[batch, 4, 8\]"):
        stream(torch.randn(2, 3, 8), stream.init_state(2))
    model = SequenceModel(3, d_input=2, d_model=8, n_layers=1, ssm=dict(d_state=8))
    with pytest.raises(ValueError, match="state must hold 3 tensors"):
        model.step(torch.randn(2, 2), model.init_state(2)[:2])
    with pytest.raises(ValueError, match="frames of shape"):
        model.streaming(4)(torch.randn(2, 4, 3), model.init_state(2))
    assert [default_chunk(T) for T in (1, 2, 16, 17, 160, 1024)] == [1, 2, 4, 8, 16, 32]


# -- whole models ------------------------------------------------------------------------------------
MODELS = {
    "s5-batchnorm-prenorm": dict(layer="s5", ssm=dict(d_state=16, blocks=2), activation="half_glu1"),
    "s4d-layernorm-postnorm": dict(layer="s4d", ssm=dict(d_state=16, n_ssm=2), norm="layer", prenorm=False,
                                   final_norm=True, activation="glu"),
    "s5-half_glu2-last": dict(layer="s5", ssm=dict(d_state=8, discretization="bilinear"), activation="half_glu2",
                              pooling="last", gelu_approximate="none"),
    "s4d-full_glu-final-bn": dict(layer="s4d", ssm=dict(d_state=8), activation="full_glu", final_norm=True),
    "s5-gelu-tokens": dict(layer="s5", ssm=dict(d_state=8), activation="gelu", vocab_size=12),
}


def make_model(name: str) -> SequenceModel:
    kw = dict(MODELS[name])
    inputs = {} if "vocab_size" in kw else dict(d_input=3)
    model = SequenceModel(5, **inputs, d_model=H, n_layers=2, dropout=0.25, bn_momentum=0.5, **kw)
    # Non-trivial norm affines and BatchNorm running statistics.
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm | torch.nn.BatchNorm1d):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
        model.train()
        for _ in range(3):
            model(model_input(model, 8, 40) * 3 + 1 if not model.tokens else model_input(model, 8, 40))
    return model


def model_input(model: SequenceModel, B: int, T: int) -> torch.Tensor:
    if model.tokens:
        return torch.randint(0, model.encoder.num_embeddings, (B, T))
    return torch.randn(B, T, model.encoder.in_features)


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_model_stream_equals_forward(name):
    """In training mode too: streaming uses BatchNorm's running statistics and no dropout, i.e. the
    eval-mode forward."""
    model = make_model(name)
    x = model_input(model, 4, 200)
    ref = model.eval()(x)
    model.train()
    state = model.init_state(4)
    for t in range(60):
        logits, state = model.step(x[:, t], state)
    assert rel_max(logits, model.eval()(x[:, :60])) <= 1e-4
    model.train()
    for a, b in [(60, 67), (67, 160), (160, 200)]:
        logits, state = model.step(x[:, a:b], state)
    assert rel_max(logits, ref) <= 1e-4
    assert model.training  # step did not switch modes


@torch.no_grad()
def test_model_stream_matches_padded_batches_and_step_rescale():
    """Streaming a row up to its length gives the masked-mean logits of the padded batch."""
    model = make_model("s4d-layernorm-postnorm").eval()
    x = model_input(model, 3, 90)
    lengths = torch.tensor([90, 41, 7])
    ref = model(x, lengths)
    for b in range(3):
        logits, _ = model.step(x[b:b + 1, :lengths[b]], model.init_state(1))
        assert rel_max(logits[0], ref[b]) <= 1e-4
    logits, _ = model.step(x, model.init_state(3), step_rescale=2.0)
    assert rel_max(logits, model(x, step_rescale=2.0)) <= 1e-4
    assert rel_max(logits, ref) > 1e-3  # the rescale did change the output


@torch.no_grad()
def test_streaming_model_frames_equal_steps():
    model = make_model("s5-batchnorm-prenorm").eval()
    x = model_input(model, 2, 64)
    per_step, per_frame = model.streaming(1), model.streaming(16)
    s1, s16 = per_step.init_state(2), per_frame.init_state(2)
    for t in range(64):
        a, s1 = per_step(x[:, t:t + 1], s1)
        if t % 16 == 15:
            b, s16 = per_frame(x[:, t - 15:t + 1], s16)
            assert torch.allclose(a, b, atol=1e-5)
            assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(s1, s16))
    assert [tuple(s.shape) for s in s1] == [(2, 8, 2), (2, 8, 2), (2, H), (2, 1)]
    assert s1[-1].flatten().tolist() == [64.0, 64.0]


@torch.no_grad()
def test_trained_digits_model_streams_exactly():
    model, x, y = trained_digits()
    ref = model(x)
    assert (ref.argmax(-1) == y).float().mean() > 0.75  # a trained model, not noise
    state = model.init_state(x.shape[0])
    for t in range(x.shape[1]):
        logits, state = model.step(x[:, t], state)
    assert rel_max(logits, ref) <= 1e-4
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    # Pruned by LAST, masked and compacted: the streams equal the masked model's forward.
    masked = SequenceModel(**model.config())
    masked.load_state_dict(model.state_dict())
    masked.eval()
    apply_pruning(masked, plan_pruning(masked, "last", 0.5))
    ref_pruned = masked(x)
    for m in (masked, compact_model(masked).eval()):
        stream = m.streaming(16)
        state = stream.init_state(x.shape[0])
        for t in range(0, x.shape[1], 16):
            logits, state = stream(x[:, t:t + 16], state)
        assert rel_max(logits, ref_pruned) <= 1e-4
        assert [s.shape[1] for s in state[:-2]] == [layer.n_active for layer in masked.ssm_layers()]
