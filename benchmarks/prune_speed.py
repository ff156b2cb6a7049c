"""Inference speed and peak memory of pruned S5 models: compacted vs masked vs full, and the cost of
scoring and planning.

    python benchmarks/prune_speed.py                 # the LRA shapes (GPU), batch as in Table 4
    python benchmarks/prune_speed.py --quick         # small shapes for a 2-core CPU (~2 minutes)
    python benchmarks/prune_speed.py --tasks text,pathx --ratios 0,0.3,0.6 --json out.json

For each task shape (LAST paper Table 4: layers, H, n_m, J, bidirectional) a randomly initialized
S5 ``SequenceModel`` is pruned with LAST to each ratio, then (a) physically compacted
(``compact_model``) and (b) only masked, and one evaluation step (forward, ``inference_mode``, eval
mode) is timed. LAST paper Table 8 reports 1.1–1.7× speed-ups at 30–60 % on an RTX 3090. On random
weights the per-layer kept counts differ from a trained model's, but the cost depends only on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_main, machine, run_isolated, timed_peak

# task: (layers, H, P_full, J, L, eval batch)  — LAST paper Table 4 (S5), batch sizes as trained.
TASKS = {
    "listops": (8, 128, 16, 8, 2048, 50),
    "text": (6, 256, 192, 12, 4096, 50),
    "retrieval": (6, 128, 256, 16, 4000, 64),  # 32 pairs = 64 documents per step
    "image": (6, 512, 384, 3, 1024, 50),
    "pathfinder": (6, 192, 256, 8, 1024, 64),
    "pathx": (6, 128, 256, 16, 16384, 32),
}
QUICK = {
    "text-small": (6, 64, 192, 12, 1024, 4),
    "pathx-small": (6, 32, 256, 16, 4096, 2),
}


def _build(spec: dict):
    import torch

    from ssmlit.models import SequenceModel
    from ssmlit.pruning import apply_pruning, compact_model, plan_pruning

    torch.manual_seed(0)
    n_layers, H, P, J = spec["shape"][:4]
    model = SequenceModel(10, d_input=1, d_model=H, n_layers=n_layers,
                          ssm=dict(d_state=P, blocks=J, bidirectional=True, scan=spec["scan"])).eval()
    plan_s = None
    if spec["ratio"] > 0:
        t = time.perf_counter()
        plan = plan_pruning(model, "last", spec["ratio"])
        plan_s = time.perf_counter() - t
        apply_pruning(model, plan)
        if spec["mode"] == "compact":
            model = compact_model(model).eval()
    return model, plan_s


def _measure(spec: dict) -> dict:
    import torch

    model, plan_s = _build(spec)
    dev = torch.device(spec["device"])
    model = model.to(dev)
    L, B = spec["shape"][4], spec["batch"]
    x = torch.randn(B, L, 1, device=dev)

    @torch.inference_mode()
    def step():
        model(x)

    res = timed_peak(step, spec["device"], spec["reps"], warmup=2)
    res["states"] = sum(s.n_active for s in model.ssm_layers())
    res["stored"] = sum(s.n_states for s in model.ssm_layers())
    if plan_s is not None:
        res["plan_s"] = plan_s
    return res


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes for a CPU")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of the task shapes")
    ap.add_argument("--ratios", default="0,0.3,0.5,0.6,0.9")
    ap.add_argument("--batch", type=int, default=None, help="override the per-task batch")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--scan", default="auto", help="S5 scan engine (default: what the models use)")
    ap.add_argument("--no-masked", action="store_true", help="skip the masked (uncompacted) rows")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    shapes = QUICK if args.quick else TASKS
    if args.tasks:
        shapes = {k: v for k, v in (TASKS | QUICK).items() if k in args.tasks.split(",")}
    reps = args.reps or (10 if gpu else 3)
    ratios = [float(r) for r in args.ratios.split(",")]

    print(f"Machine: {machine(args.device)}; S5, bidirectional, scan={args.scan}, LAST plans on random weights; "
          f"median of {reps} evaluation steps (forward, inference_mode)\n")
    print("| task | layers×H, n_m | L | batch | ratio | mode | states | step ms | speed-up | peak MiB | memory "
          "| plan s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for task, shape in shapes.items():
        batch = args.batch or shape[5]
        full = None
        for ratio in ratios:
            for mode in ("compact",) if ratio == 0 or args.no_masked else ("compact", "masked"):
                spec = dict(task=task, shape=shape, batch=batch, ratio=ratio, mode=mode, reps=reps,
                            device=args.device, scan=args.scan)
                res = run_isolated(__file__, spec, _measure if gpu else None)
                rows.append(spec | res)
                head = f"| {task} | {shape[0]}×{shape[1]}, {shape[2]} | {shape[4]} | {batch} | {ratio:.0%} | {mode} |"
                if "error" in res:
                    print(f"{head} {res['error']} |||||")
                    continue
                if ratio == 0:
                    full = res
                speed = f"{full['ms'] / res['ms']:.2f}×" if full else ""
                mem = f"{res['peak_mib'] / full['peak_mib']:.2f}×" if full and full["peak_mib"] > 0 else ""
                plan = f"{res['plan_s']:.3f}" if "plan_s" in res else ""
                print(f"{head} {res['states']}/{res['stored']} | {res['ms']:.1f} | {speed} | {res['peak_mib']:.0f} | "
                      f"{mem} | {plan} |")
                sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(_measure)
    else:
        main()
