"""Streaming inference speed of pruned (compacted) unidirectional S5 models, PyTorch eager and onnxruntime.

    python benchmarks/stream_speed.py                    # Speech Commands and digits shapes, 1 thread
    python benchmarks/stream_speed.py --quick            # Speech shape, 0 / 50 %, few repeats (~1 min)
    python benchmarks/stream_speed.py --threads 2 --ratios 0,0.5 --no-onnx --json out.json

For each shape a randomly initialized unidirectional S5 ``SequenceModel`` is pruned with LAST to each
ratio and compacted, and its frozen streaming form (``model.streaming(frame)``, the function that
``ssmlit.export`` writes) is timed:

- latency at batch 1 of one call with a frame of 1 step and of 160 steps (10 ms of 16 kHz audio);
  real-time factor RTF = (time per 160-step frame) / 10 ms (the target: ≤ 0.3 unpruned on one core);
- throughput at batch 64 with 160-step frames, in seconds of 16 kHz audio processed per second;

in eager PyTorch and in an onnxruntime CPU session of the exported ONNX graph. Medians over
``--reps`` rounds, each the mean of several calls. The model's FLOPs per step are split into the
SSM part (B̄u, Cx and the scan; proportional to the kept states) and the rest (the H×H mixing of the
GLU, norms, encoder), which pruning does not touch. On random weights the per-layer kept counts
differ from a trained model's, but the cost depends only on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

# name: (layers, H, P_full, J, d_input, classes, activation)
SHAPES = {
    "speech": (6, 96, 128, 16, 1, 35, "half_glu1"),  # LAST paper Table 4, S5 Speech Commands (unidirectional)
    "digits": (4, 64, 64, 4, 1, 10, "half_glu1"),  # conf/model/s5.yaml, the embedded default
}
AUDIO_RATE = 16_000


def build(shape: tuple, ratio: float):
    import torch

    from ssmlit.models import SequenceModel
    from ssmlit.pruning import apply_pruning, compact_model, plan_pruning

    torch.manual_seed(0)
    n_layers, H, P, J, d_in, classes, act = shape
    model = SequenceModel(classes, d_input=d_in, d_model=H, n_layers=n_layers, activation=act,
                          ssm=dict(d_state=P, blocks=J, bidirectional=False)).eval()
    if ratio > 0:
        apply_pruning(model, plan_pruning(model, "last", ratio))
        model = compact_model(model).eval()
    return model


def flops_per_step(model, frame: int) -> dict[str, float]:
    """Multiply-adds × 2 per step of ``model.streaming(frame)``: the SSM part and the rest."""
    from ssmlit.models.recurrence import default_chunk

    H = model.blocks[0].ssm.d_model
    c = default_chunk(frame)
    m = -(-frame // c)
    ssm = rest = 0.0
    for block, layer in zip(model.blocks, model.ssm_layers()):
        k = layer.n_active
        scan = 8.0 if frame == 1 else (2 * (2 + 2 * c) * 2 * c + 2 * 2 * c * 2) / c + 2 * (2 * m) ** 2 / frame
        ssm += 2 * 2 * (2 * k * H) + k * scan  # W_in, W_out, then the scan per state
        rest += 2 * H * H * sum(hasattr(block, n) for n in ("out1", "out2")) + 2 * 2 * H * H * hasattr(block, "out")
        rest += 8 * H  # norm, GELU, gate, residual (elementwise, approximate)
    return {"ssm": ssm, "rest": rest}


def timeit(fn, reps: int, inner: int) -> float:
    """Median over ``reps`` rounds of the mean seconds per call over ``inner`` calls."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def measure(model, frames: list[int], batch: int, reps: int, threads: int, onnx: bool) -> dict:
    import torch

    out = {}
    for frame in frames:
        stream = model.streaming(frame)
        for b in sorted({1, batch} if frame > 1 else {1}):
            x = torch.randn(b, frame, stream.d_input)
            state = [stream.init_state(b)]

            def eager(x=x, state=state, stream=stream):
                with torch.inference_mode():
                    _, state[0] = stream(x, state[0])

            inner = max(1, int(2000 / (frame * b)) if b == 1 else 2)
            out[f"eager/{frame}/{b}"] = timeit(eager, reps, inner)
            if onnx:
                from ssmlit.export.core import metadata, to_onnx
                from ssmlit.export.runtime import OnnxStream

                sess = OnnxStream(to_onnx(stream, metadata(stream, None)), threads)
                xs, st = x.numpy(), [sess.init_state(b)]

                def ort(xs=xs, st=st, sess=sess):
                    _, st[0] = sess(xs, st[0])

                out[f"onnx/{frame}/{b}"] = timeit(ort, reps, inner)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Speech shape only, ratios 0 and 0.5, few repeats")
    ap.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated subset of {sorted(SHAPES)}")
    ap.add_argument("--ratios", default="0,0.3,0.5,0.9")
    ap.add_argument("--frame", type=int, default=160, help="steps per frame (160 = 10 ms at 16 kHz)")
    ap.add_argument("--batch", type=int, default=64, help="batch of the throughput measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-onnx", action="store_true", help="eager PyTorch only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    unknown = set(args.models.split(",")) - set(SHAPES)
    if unknown:
        ap.error(f"unknown --models {sorted(unknown)}; choose from {sorted(SHAPES)}")
    if args.frame < 2 or args.batch < 1 or args.threads < 1:
        ap.error("need --frame >= 2, --batch >= 1 and --threads >= 1")
    models = ["speech"] if args.quick else args.models.split(",")
    ratios = [0.0, 0.5] if args.quick else [float(r) for r in args.ratios.split(",")]
    reps = args.reps or (3 if args.quick else 15)
    torch.set_num_threads(args.threads)
    onnx = not args.no_onnx
    if onnx:
        from ssmlit.export.runtime import onnx_available

        if (missing := onnx_available()) is not None:
            ap.error(f"{missing}; or pass --no-onnx")
    F = args.frame
    frame_ms = 1e3 * F / AUDIO_RATE
    print(f"Machine: {machine('cpu')}; onnxruntime with {args.threads} intra-op thread(s). Unidirectional S5, "
          f"LAST plans on random weights, compacted; median of {reps} rounds.\n")
    print(f"| model (layers×H, P_full) | pruned | states | GFLOP/s of audio (SSM + rest) | runtime | 1-step latency µs "
          f"| {F}-step frame ms | RTF | speed-up vs 0 % | batch {args.batch}: s audio / s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows, base = [], {}
    for name in models:
        shape = SHAPES[name]
        for ratio in ratios:
            model = build(shape, ratio)
            fl = flops_per_step(model, F)
            res = measure(model, [1, F], args.batch, reps, args.threads, onnx)
            states = [layer.n_active for layer in model.ssm_layers()]
            gflop = (fl["ssm"] + fl["rest"]) * AUDIO_RATE / 1e9
            for rt in ("eager", "onnx") if onnx else ("eager",):
                step, frame, thr = res[f"{rt}/1/1"], res[f"{rt}/{F}/1"], res[f"{rt}/{F}/{args.batch}"]
                if ratio == 0:
                    base[(name, rt)] = frame
                speed = base[(name, rt)] / frame if (name, rt) in base else float("nan")
                audio = args.batch * F / AUDIO_RATE / thr
                row = dict(model=name, shape=shape, ratio=ratio, states=states, runtime=rt, flops_per_step=fl,
                           step_s=step, frame_s=frame, throughput_s=thr, rtf=1e3 * frame / frame_ms,
                           speedup=speed, audio_s_per_s=audio, threads=args.threads)
                rows.append(row)
                print(f"| {name} ({shape[0]}×{shape[1]}, {shape[2]}) | {ratio:.0%} | {sum(states)} | {gflop:.2f} "
                      f"({fl['ssm'] * AUDIO_RATE / 1e9:.2f} + {fl['rest'] * AUDIO_RATE / 1e9:.2f}) | {rt} "
                      f"| {1e6 * step:.0f} | {1e3 * frame:.2f} | {row['rtf']:.3f} | {speed:.2f}× | {audio:.1f} |")
                sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
