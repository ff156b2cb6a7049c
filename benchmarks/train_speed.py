"""Training step time of S5 models pruned during training: compacted (states removed from the model and
the optimizer by ``ssmlit.training.surgery``) vs masked only, against the unpruned model.

    python benchmarks/train_speed.py --quick                 # small shapes for a 2-core CPU
    python benchmarks/train_speed.py                         # the LRA shapes (use a GPU)
    python benchmarks/train_speed.py --device cuda --tasks text,retrieval,pathx --ratios 0,0.5,0.9

Each row times one full training step — zero_grad, forward, cross-entropy, backward, AdamW step —
at the task's training batch (LAST paper Table 4 shapes, bidirectional S5, random weights), median
of ``--reps`` steps after warm-up. A pruned model is first trained for two steps, then pruned with
LAST, then either compacted through the same surgery the callback uses (so the optimizer carries
its moments into the smaller shapes) or left masked. Issue 13's target: >= 1.3x faster steps at
50 % on the Text, Retrieval and Path-X shapes. Masking alone should buy nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_main, machine, run_isolated, timed_peak
from prune_speed import TASKS

QUICK = {  # CPU-sized versions of the Text / Retrieval / Path-X shapes
    "text-small": (2, 64, 192, 12, 1024, 4),
    "retrieval-small": (2, 32, 256, 16, 1000, 4),
    "pathx-small": (2, 32, 256, 16, 4096, 2),
}


def _measure(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from ssmlit.models import SequenceModel
    from ssmlit.pruning import apply_pruning, plan_pruning
    from ssmlit.training import param_groups
    from ssmlit.training.surgery import compact_layers, transfer_optimizer_state

    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    n_layers, H, P, J, L = spec["shape"][:5]
    B = spec["batch"]
    model = SequenceModel(10, d_input=1, d_model=H, n_layers=n_layers,
                          ssm=dict(d_state=P, blocks=J, bidirectional=True, scan=spec["scan"])).to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, 4e-3, 1e-3, 0.05))
    x, y = torch.randn(B, L, 1, device=dev), torch.randint(0, 10, (B,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    if spec["ratio"] > 0:
        for _ in range(2):  # optimizer state exists, as it does mid-training
            step()
        apply_pruning(model, plan_pruning(model, "last", spec["ratio"]))
        if spec["mode"] == "compact":
            transfer_optimizer_state(opt, compact_layers(model).moves)
    res = timed_peak(step, spec["device"], spec["reps"], warmup=2)
    res["states"] = sum(s.n_active for s in model.ssm_layers())
    res["stored"] = sum(s.n_states for s in model.ssm_layers())
    return res


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes for a CPU")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of the task shapes")
    ap.add_argument("--ratios", default="0,0.5,0.9")
    ap.add_argument("--batch", type=int, default=None, help="override the per-task batch")
    ap.add_argument("--length", type=int, default=None, help="override the sequence length (smoke runs)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--scan", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    shapes = QUICK if args.quick else {k: v for k, v in TASKS.items() if k != "listops"}
    if args.tasks:
        shapes = {k: v for k, v in (TASKS | QUICK).items() if k in args.tasks.split(",")}
    if args.length:
        shapes = {k: (*v[:4], args.length, v[5]) for k, v in shapes.items()}
    reps = args.reps or (10 if gpu else 3)
    ratios = [float(r) for r in args.ratios.split(",")]

    print(f"Machine: {machine(args.device)}; S5, bidirectional, scan={args.scan}, LAST on random weights; "
          f"median of {reps} training steps (forward + backward + AdamW)\n")
    print("| task | layers×H, n_m | L | batch | ratio | mode | states (act/stored) | step ms | vs full | vs masked |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for task, shape in shapes.items():
        batch = args.batch or shape[5]
        full = None
        for ratio in ratios:
            masked = None
            for mode in ("full",) if ratio == 0 else ("masked", "compact"):
                spec = dict(task=task, shape=list(shape), batch=batch, ratio=ratio, mode=mode, reps=reps,
                            device=args.device, scan=args.scan)
                res = run_isolated(__file__, spec, _measure if gpu else None)
                rows.append(spec | res)
                head = f"| {task} | {shape[0]}×{shape[1]}, {shape[2]} | {shape[4]} | {batch} | {ratio:.0%} | {mode} |"
                if "error" in res:
                    print(f"{head} {res['error']} ||||")
                    continue
                full = res if mode == "full" else full
                masked = res if mode == "masked" else masked
                vs_full = f"{full['ms'] / res['ms']:.2f}×" if full else ""
                vs_masked = f"{masked['ms'] / res['ms']:.2f}×" if masked and mode == "compact" else ""
                print(f"{head} {res['states']}/{res['stored']} | {res['ms']:.1f} | {vs_full} | {vs_masked} |")
                sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(_measure)
    else:
        main()
