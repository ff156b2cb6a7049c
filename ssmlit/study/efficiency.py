"""Inference cost of a model: parameters, per-layer state dimensions, throughput, peak memory and
streaming latency.

Measurement protocol (the same for every model compared):

- one fixed batch, the same tensors for every model;
- ``warmup`` untimed forward passes first (allocator, caches, lazy initialisation);
- then ``repeats`` rounds in which every model runs once, interleaved (A, B, A, B, ...), so that a
  background load spike hits all models alike; the median time per batch is reported;
- CUDA: ``torch.cuda.synchronize()`` around each timed pass; peak memory is
  ``max_memory_allocated()`` during one forward pass minus what was allocated before it (weights
  and inputs excluded);
- CPU: peak memory is the high-water mark of the bytes torch's CPU allocator holds during one
  forward pass beyond what it held before, from the profiler's allocation events (``tracemalloc``
  would miss tensor memory, and the process RSS cannot be reset between models).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ssmlit.models import count_parameters
from ssmlit.pruning import prunable_layers


def state_dims(model: nn.Module) -> dict[str, int]:
    """Layer name → active state dimension in real states: 2 × active stored conjugate pairs.

    This is the paper's effective state dimension n (§2.2): P for S5, n_s·H for an S4D layer.
    """
    return {name: 2 * int(layer.state_mask.sum()) for name, layer in prunable_layers(model).items()}


def model_stats(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and state dimensions of a model."""
    layers = prunable_layers(model)
    return dict(
        params=count_parameters(model),
        params_and_buffers=sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()),
        stored_states={k: int(v.state_mask.numel()) for k, v in layers.items()},
        state_dim=state_dims(model),
    )


def _cpu_peak_bytes(fn: Callable[[], Any]) -> float:
    """Peak extra bytes held by torch's CPU allocator while ``fn`` runs, from the profiler's
    allocation events (NaN if this torch build does not expose them)."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto prints a "profiler_start/stop" line per profile on some builds; keep the output clean
    # unless the user asked for its logging.
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        # Every allocation and free is a "[memory]" event with a signed byte count; the public
        # prof.events() drops those that happen inside an operator, so read the raw event list.
        raw = prof.profiler.kineto_results.events()
        events = sorted((e.start_ns(), e.nbytes()) for e in raw
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return float("nan")
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return float(peak)


def _cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def compare_inference(
    models: Mapping[str, nn.Module],
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device | str = "cpu",
    step_rescale: float = 1.0,
    warmup: int = 3,
    repeats: int = 10,
    baseline: str | None = None,
) -> dict[str, dict[str, float]]:
    """Time and measure the memory of several models on the same batch.

    Args:
        models: name → model (moved to ``device``, eval mode).
        batch: ``(x, y, lengths)`` with x [B, L(, d)]; y is unused.
        device: where to run.
        step_rescale: passed to every forward call.
        warmup, repeats: untimed passes per model, then timed interleaved rounds.
        baseline: the model speed-ups are relative to (default: the first).

    Returns:
        name → ``{"batch_size", "seconds_per_batch" (median), "seconds_min", "samples_per_s"
        (from the median), "speedup" (vs baseline, median of per-round ratios), "peak_memory_bytes"}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    x, _, lengths = (t.to(device) for t in batch)
    cuda = device.type == "cuda"

    def runner(model: nn.Module) -> Callable[[], Any]:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return model(x, lengths, step_rescale)
        return run

    runs = {}
    for name, model in models.items():
        model.to(device).eval()
        runs[name] = runner(model)
        for _ in range(warmup):
            runs[name]()
    if cuda:
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
    base = times[baseline if baseline is not None else next(iter(times))]
    out = {}
    for name, run in runs.items():
        peak = _cuda_peak_bytes(run, device) if cuda else _cpu_peak_bytes(run)
        med = statistics.median(times[name])
        speedup = statistics.median(b / t for b, t in zip(base, times[name]))
        out[name] = dict(batch_size=int(x.shape[0]), seconds_per_batch=med, seconds_min=min(times[name]),
                         samples_per_s=x.shape[0] / med, speedup=speedup, peak_memory_bytes=peak)
    return out


def stream_latency(
    models: Mapping[str, nn.Module], frame: int = 1, batch: int = 1, warmup: int = 3, repeats: int = 10,
    calls: int = 20,
) -> dict[str, dict[str, float]]:
    """Latency of streaming inference (``model.streaming(frame)``, eager, CPU) per call.

    Same protocol as :func:`compare_inference`: warm-up calls, then ``repeats`` interleaved rounds
    in which each model makes ``calls`` consecutive calls carrying its state; the median of the
    per-call means is reported.

    Returns:
        name → ``{"frame", "batch", "seconds_per_call", "seconds_per_step", "speedup"}`` (speed-up
        against the first model, median of per-round ratios).
    """
    if repeats < 1 or warmup < 0 or calls < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, calls >= 1, got {repeats}, {warmup}, {calls}")
    runs: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        stream = model.cpu().streaming(frame)
        x = (torch.zeros(batch, frame, dtype=torch.long) if stream.tokens
             else torch.randn(batch, frame, stream.d_input, generator=torch.Generator().manual_seed(0)))
        state = [stream.init_state(batch)]

        def run(stream=stream, x=x, state=state) -> None:
            with torch.inference_mode():
                for _ in range(calls):
                    _, state[0] = stream(x, state[0])

        for _ in range(warmup):
            run()
        runs[name] = run
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) / calls)
    base = next(iter(times.values()))
    return {name: dict(frame=frame, batch=batch, seconds_per_call=statistics.median(t),
                       seconds_per_step=statistics.median(t) / frame,
                       speedup=statistics.median(b / x for b, x in zip(base, t)))
            for name, t in times.items()}
