"""Cost of data-aware calibration (``ssmlit.pruning.calibration.calibrate``) against a plain
evaluation pass over the same batches: the ratio the README reports.

    python benchmarks/calibration_cost.py                # S5 and S4D at the digits and PLAID shapes
    python benchmarks/calibration_cost.py --quick        # tiny shapes (a smoke test)

Each row times ``model(x, lengths)`` under ``torch.inference_mode`` over the batches (plain) and
``calibrate(model, batches)`` (one forward pass per batch with the energy hooks), median of
``--repeats`` runs, and prints both and their ratio. A ratio, so it is meaningful on a loaded
machine too; absolute times are not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssmlit.models import SequenceModel
from ssmlit.pruning.calibration import calibrate

SHAPES = [  # (name, layer, L, batch, batches, ssm kwargs)
    ("digits S5", "s5", 64, 32, 4, dict(d_state=64, blocks=4)),
    ("PLAID S5", "s5", 1344, 16, 4, dict(d_state=64, blocks=4)),
    ("digits S4D", "s4d", 64, 32, 4, dict(d_state=64)),
    ("PLAID S4D", "s4d", 1344, 16, 4, dict(d_state=64)),
]
QUICK = [("tiny S5", "s5", 32, 4, 2, dict(d_state=8, blocks=2)), ("tiny S4D", "s4d", 32, 4, 2, dict(d_state=8))]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--d-model", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{'shape':<12} {'plain eval':>11} {'calibrate':>11} {'ratio':>6}")
    for name, layer, L, B, n, ssm in (QUICK if args.quick else SHAPES):
        H = 8 if args.quick else args.d_model
        model = SequenceModel(d_output=10, d_input=1, layer=layer, d_model=H, n_layers=4 if not args.quick else 2,
                              ssm=ssm).eval()
        batches = [(torch.randn(B, L, 1), torch.zeros(B, dtype=torch.long), torch.randint(L // 4, L + 1, (B,)))
                   for _ in range(n)]

        def plain(model=model, batches=batches):
            with torch.inference_mode():
                for x, _, lengths in batches:
                    model(x, lengths)

        plain()  # warm-up
        calibrate(model, batches)
        t_plain = _median_time(plain, args.repeats)
        t_cal = _median_time(lambda m=model, b=batches: calibrate(m, b), args.repeats)
        print(f"{name:<12} {1e3 * t_plain:>9.1f}ms {1e3 * t_cal:>9.1f}ms {t_cal / t_plain:>5.2f}×")


if __name__ == "__main__":
    main()
