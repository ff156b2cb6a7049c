"""GPU correctness check (CI has no GPU, so this is run by hand on a CUDA machine).

    python benchmarks/gpu_check.py [--json out.json]
    python benchmarks/gpu_check.py --device cpu --tiny      # seconds: the script itself runs

Checks, on the CUDA device, against float64 sequential recurrences computed on the CPU from each
layer's raw parameters by the textbook discretization (the references of tests/reference.py):

1. S5 (every scan engine, Triton included) and S4D outputs at L = 1024, uni-/bidirectional,
   ZOH/bilinear, with slow modes near the unit circle — once with full-precision float32 matmuls and
   once with the TF32 setting of ``matmul_precision: high``;
1b. the Triton scan's forward and backward (``ssm_core``: output and every input gradient) against
   the float64 CPU lean engine (itself gradchecked in the tests) at L = 4,096, uni-/bidirectional;
2. masked ≡ compacted models and CUDA plans ≡ CPU plans (``plan_pruning``);
3. a bf16-mixed forward/backward of a SequenceModel (the recurrences stay in float32);
4. a few Lightning training steps on the GPU with the StatePruningCallback pruning mid-run;
5. streaming inference on the device (``model.streaming``: one step and 160-step frames, S5 and
   S4D, pruned and compacted) against the CPU's parallel forward.

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

from ssmlit.models import S4D, S5, SequenceModel  # noqa: E402
from ssmlit.models.s5 import SCAN_CHOICES  # noqa: E402
from ssmlit.models.scan_autograd import ssm_core, triton_available  # noqa: E402

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


def s5_scans(dev: torch.device) -> list[str]:
    """Every S5 engine worth checking on ``dev`` (triton only on CUDA with triton installed)."""
    skip = {"auto", "sequential"} | ({"triton"} if dev.type != "cuda" or not triton_available() else set())
    return [s for s in SCAN_CHOICES if s not in skip]


def layer_checks(dev: torch.device, L: int = 1024) -> None:
    u = torch.randn(2, L, 16)
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        tag = "tf32" if tf32 else "fp32"
        for bidirectional in (False, True):
            for disc in ("zoh", "bilinear"):
                for scan in s5_scans(dev):
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
            # state-spaces/s4's shifted anti-causal kernel (reference: the protocol with backward_delay 1)
            torch.manual_seed(0)
            layer = S4D(16, 64, bidirectional=True, bidirectional_convention="s4")
            ref = recurrence_output(layer, u)
            with torch.no_grad():
                y = layer.to(dev)(u.to(dev)).cpu()
            check(f"S4D s4-convention [{tag}]", rel_err(y, ref), 1e-4 if not tf32 else 1e-2)
    torch.backends.cuda.matmul.allow_tf32 = False


def triton_gradient_checks(dev: torch.device, L: int = 4096, engine: str = "triton") -> None:
    """ssm_core on the device with ``engine`` (float32; the Triton kernels on CUDA) vs the float64
    lean engine on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    for d in (1, 2):
        torch.manual_seed(d)
        B, H, P = 2, 16, 24
        log_lam = torch.complex(-torch.logspace(-6, -1, P, dtype=torch.float64),
                                torch.linspace(0, 3, P, dtype=torch.float64))  # |λ̄| from 1 − 1e-6
        inputs = [torch.randn(B, L, H, dtype=torch.float64), torch.randn(H, 2 * P, dtype=torch.float64) / 4,
                  log_lam, torch.randn(d, 2 * P, H, dtype=torch.float64) / 4]
        w = torch.randn(B, L, H, dtype=torch.float64)

        def run(tensors, engine, w):
            tensors = [t.clone().requires_grad_() for t in tensors]
            y = ssm_core(*tensors, engine=engine)
            return [y, *torch.autograd.grad((y * w).sum(), tensors)]

        ref = run(inputs, "lean", w)
        low = [t.to(dev, torch.complex64 if t.is_complex() else torch.float32) for t in inputs]
        got = run(low, engine, w.to(dev, torch.float32))
        for name, g, r in zip(("y", "grad u", "grad W_in", "grad log_lam", "grad W_out"), got, ref):
            r = r.detach()
            err = float((g.detach().cpu().to(r.dtype) - r).norm() / r.norm())
            check(f"{engine} ssm_core d={d} {name} vs float64", err, 2e-4)  # lean float32: 2.5e-5 – 4.2e-5


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


def streaming_checks(dev: torch.device) -> None:
    from ssmlit.pruning import apply_pruning, compact_model, plan_pruning

    torch.backends.cuda.matmul.allow_tf32 = False
    for layer, ssm in (("s5", dict(d_state=32, blocks=2)), ("s4d", dict(d_state=16))):
        torch.manual_seed(0)
        model = SequenceModel(10, d_input=3, layer=layer, d_model=32, n_layers=3, ssm=ssm)
        with torch.no_grad():
            model.train()
            model(torch.randn(8, 200, 3) * 2 + 1)  # non-trivial BatchNorm statistics
        model.eval()
        apply_pruning(model, plan_pruning(model, "last", 0.5))
        x = torch.randn(4, 640, 3)
        with torch.no_grad():
            ref = model(x)
        for name, m in (("masked", model), ("compacted", compact_model(model).eval())):
            for frame in (1, 160):
                stream = m.to(dev).streaming(frame)
                state = stream.init_state(4, dev)
                xd = x.to(dev)
                with torch.inference_mode():
                    for t in range(0, x.shape[1], frame):
                        logits, state = stream(xd[:, t:t + frame], state)
                err = float((logits.cpu() - ref).abs().max() / ref.abs().max())
                check(f"{layer} {name} streaming, frame {frame} ({dev.type}) vs CPU forward", err, 1e-4)
            m.cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="short sequences and no training run (a smoke run)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"triton {'yes' if triton_available() else 'no'}; S5 engines checked: {s5_scans(dev)}")
    # Each part is guarded: one crash (a missing optional package, say) does not hide the others.
    parts = [("layers", lambda: layer_checks(dev, 128 if args.tiny else 1024))]
    grad_engine = "triton" if "triton" in s5_scans(dev) else "lean"  # lean: exercises this check off CUDA
    parts.append(("scan gradients", lambda: triton_gradient_checks(dev, 256 if args.tiny else 4096, grad_engine)))
    parts.append(("pruning", lambda: pruning_checks(dev)))
    parts.append(("new scores", lambda: new_score_checks(dev)))
    if dev.type == "cuda":
        parts.append(("mixed precision", lambda: mixed_precision_check(dev)))
    parts.append(("streaming", lambda: streaming_checks(dev)))
    if not args.tiny:
        parts.append(("lightning", lambda: lightning_check(dev)))
    for name, fn in parts:
        try:
            fn()
        except Exception as e:  # reported as a failed check; the other parts still run
            check(f"{name}: crashed with {type(e).__name__}: {str(e).splitlines()[0][:120]}", math.inf, 0.0)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
