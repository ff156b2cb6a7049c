"""GPU correctness check (CI has no GPU, so this is run by hand on a CUDA machine).

    python benchmarks/gpu_check.py [--json out.json]

Checks, on the CUDA device, against float64 sequential recurrences computed on the CPU from each
layer's ``discretized_system()`` (the same references as tests/reference.py):

1. S5 (every scan algorithm) and S4D outputs at L = 1024, uni-/bidirectional, ZOH/bilinear, with
   slow modes near the unit circle — once with full-precision float32 matmuls and once with the
   TF32 setting of ``matmul_precision: high``;
2. masked ≡ compacted models and CUDA plans ≡ CPU plans (``plan_pruning``);
3. a bf16-mixed forward/backward of a SequenceModel (the recurrences stay in float32);
4. a few Lightning training steps on the GPU with the StatePruningCallback pruning mid-run.

Exits non-zero if a check fails; prints one line per check.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from ssmlit.models import S4D, S5, SCANS, SequenceModel  # noqa: E402

from reference import recurrence_output, rel_err  # noqa: E402

results: list[dict] = []


def check(name: str, value: float, limit: float, **info) -> None:
    ok = bool(value <= limit) and math.isfinite(value)
    results.append(dict(check=name, value=value, limit=limit, ok=ok, **info))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3g} (limit {limit:g})", flush=True)


def hard_s5(**kw) -> S5:
    layer = S5(16, 32, blocks=2, **kw)
    with torch.no_grad():
        P = layer.n_states
        layer.Lambda_re[: P // 2] = -torch.logspace(-4, -1, P // 2)
        layer.Lambda_im[P // 2:] = torch.linspace(20, 120, P - P // 2)
        layer.log_step.copy_(torch.linspace(math.log(1e-3), math.log(1e-1), P))
    return layer


def layer_checks(dev: torch.device) -> None:
    u = torch.randn(2, 1024, 16)
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        tag = "tf32" if tf32 else "fp32"
        for bidirectional in (False, True):
            for disc in ("zoh", "bilinear"):
                for scan in sorted(s for s in SCANS if s != "sequential"):
                    torch.manual_seed(0)
                    layer = hard_s5(bidirectional=bidirectional, discretization=disc, scan=scan)
                    ref = recurrence_output(layer, u)
                    with torch.no_grad():
                        y = layer.to(dev)(u.to(dev)).cpu()
                    limit = 1e-4 if not tf32 else 1e-2
                    check(f"S5 {scan} bi={bidirectional} {disc} [{tag}]", rel_err(y, ref), limit)
                torch.manual_seed(0)
                layer = S4D(16, 64, bidirectional=bidirectional, discretization=disc)
                with torch.no_grad():
                    layer.A_real[0, 0] = math.log(1e-3)
                ref = recurrence_output(layer, u)
                with torch.no_grad():
                    y = layer.to(dev)(u.to(dev)).cpu()
                check(f"S4D bi={bidirectional} {disc} [{tag}]", rel_err(y, ref), 1e-4 if not tf32 else 1e-2)
    torch.backends.cuda.matmul.allow_tf32 = False


def pruning_checks(dev: torch.device) -> None:
    from ssmlit.pruning import apply_pruning, compact_model, plan_pruning

    for layer in ("s5", "s4d"):
        torch.manual_seed(0)
        model = SequenceModel(10, d_input=3, layer=layer, d_model=32, n_layers=3,
                              ssm=dict(d_state=32, bidirectional=True)).eval()
        cpu_plan = plan_pruning(model, "last", 0.5)
        model = model.to(dev)
        plan = plan_pruning(model, "last", 0.5)
        same = all(torch.equal(plan.masks[k], cpu_plan.masks[k]) for k in plan.masks)
        check(f"{layer} CUDA plan == CPU plan", 0.0 if same else 1.0, 0.0)
        apply_pruning(model, plan)
        small = compact_model(model)
        x = torch.randn(4, 2048, 3, device=dev)
        with torch.no_grad():
            check(f"{layer} masked == compacted (CUDA)", rel_err(small(x).cpu(), model(x).cpu().double()), 1e-5)


def new_score_checks(dev: torch.device) -> None:
    """Horizon-aware, exact-pair and reference plans, and data-aware energies, on the device vs CPU."""
    from ssmlit.pruning import plan_pruning
    from ssmlit.pruning.calibration import calibrate

    for layer in ("s5", "s4d"):
        torch.manual_seed(0)
        model = SequenceModel(10, d_input=3, layer=layer, d_model=32, n_layers=3, ssm=dict(d_state=32)).eval()
        x = torch.randn(4, 1024, 3)
        batches = [(x, torch.zeros(4, dtype=torch.long), torch.tensor([1024, 700, 300, 5]))]
        cpu_e = calibrate(model, batches)
        options = [("last_horizon", dict(horizon=1024)), ("aire_horizon", dict(horizon=1024)),
                   ("last", dict(exact_pair=True)), ("last", dict(convention="reference")),
                   ("data_energy", dict(calibration=cpu_e))]
        cpu_plans = [plan_pruning(model, m, 0.5, **kw) for m, kw in options]
        model = model.to(dev)
        dev_e = calibrate(model, batches)
        err = max(float(((dev_e[k] - cpu_e[k]).abs() / cpu_e[k].abs().clamp(min=1e-30)).max()) for k in cpu_e)
        check(f"{layer} calibration energies on {dev.type} vs CPU (max rel)", err, 1e-2)
        for (m, kw), cpu_plan in zip(options, cpu_plans):
            plan = plan_pruning(model, m, 0.5, **kw)
            same = all(torch.equal(plan.masks[k], cpu_plan.masks[k]) for k in plan.masks)
            check(f"{layer} {m} {sorted(kw)} {dev.type} plan == CPU plan", 0.0 if same else 1.0, 0.0)


def mixed_precision_check(dev: torch.device) -> None:
    torch.manual_seed(0)
    model = SequenceModel(10, d_input=3, d_model=64, n_layers=2, ssm=dict(d_state=64, bidirectional=True)).to(dev)
    x = torch.randn(8, 4096, 3, device=dev)
    ref = model(x).detach()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    out.float().square().mean().backward()
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    check("bf16-mixed forward close to fp32", rel_err(out.float().detach().cpu(), ref.cpu().double()), 5e-2)
    check("bf16-mixed gradients finite", 0.0 if finite else 1.0, 0.0)


def lightning_check(dev: torch.device) -> None:
    import tempfile

    import lightning.pytorch as pl

    from ssmlit.data import DigitsDataModule
    from ssmlit.pruning import StatePruningCallback
    from ssmlit.training import SequenceClassifier

    pl.seed_everything(0)
    cb = StatePruningCallback("last", 0.5, schedule="oneshot", epoch=2, plots=False)
    module = SequenceClassifier(dict(d_input=1, d_output=10, d_model=64, n_layers=4,
                                     ssm=dict(d_state=64, blocks=4)), dict(lr=4e-3, ssm_lr=1e-3))
    cuda = dev.type == "cuda"
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[cb],
                         precision="bf16-mixed" if cuda else "32-true", default_root_dir=tempfile.mkdtemp())
    dm = DigitsDataModule(batch_size=32)
    trainer.fit(module, datamodule=dm)
    acc = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    check(f"{dev.type} training (6 epochs digits, pruned 50% at epoch 2): 1 - test acc", 1 - acc, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    layer_checks(dev)
    pruning_checks(dev)
    new_score_checks(dev)
    if dev.type == "cuda":
        mixed_precision_check(dev)
    lightning_check(dev)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
