"""Forward+backward time and peak memory of one S4D layer and one S5 layer (each scan algorithm).

    python benchmarks/layer_speed.py            # paper shapes that fit the device (GPU: all)
    python benchmarks/layer_speed.py --quick    # a small grid, ~2 minutes on a 2-core CPU
    python benchmarks/layer_speed.py --device cpu --batch 4 --reps 3

Shapes follow the LAST paper's Tables 3/4 (H = 128…512, state sizes 16…384, L = 1,024 / 4,096 /
16,384). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (in-process, reset per row); on
CPU every row runs in a fresh subprocess and reports the growth of its peak resident set size
(``ru_maxrss``) over its state right before the first pass (see ``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_main, machine, run_isolated, timed_peak

# (layer, H, state size, L): state size is S5's P_full or S4D's N per channel.
PAPER_SHAPES = [
    ("s5", 128, 16, 2048),      # ListOps
    ("s5", 512, 384, 1024),     # sCIFAR / Image
    ("s5", 256, 192, 4096),     # Text
    ("s5", 128, 256, 16384),    # Path-X
    ("s4d", 512, 64, 1024),     # sCIFAR / Image
    ("s4d", 256, 64, 4096),     # Text
    ("s4d", 256, 64, 16384),    # Path-X
]
QUICK_SHAPES = [
    ("s5", 128, 16, 1024),
    ("s5", 128, 256, 1024),
    ("s5", 128, 256, 4096),
    ("s5", 128, 256, 16384),
    ("s4d", 128, 64, 1024),
    ("s4d", 128, 64, 4096),
    ("s4d", 128, 64, 16384),
]
S5_SCANS = ["chunked", "assoc", "fft"]


def _measure(spec: dict) -> dict:
    """Time forward+backward of one layer and report its peak memory (runs in the child on CPU)."""
    import torch

    from ssmlit.models import S4D, S5

    torch.manual_seed(0)
    dev = torch.device(spec["device"])
    H, n, L, B = spec["H"], spec["n"], spec["L"], spec["batch"]
    if spec["layer"] == "s5":
        layer = S5(H, n, blocks=max(1, n // 16), bidirectional=True, scan=spec["scan"], chunk_size=spec["chunk"])
    else:
        layer = S4D(H, n, bidirectional=True)
    layer = layer.to(dev)
    u = torch.randn(B, L, H, device=dev, requires_grad=True)

    def step():
        layer.zero_grad(set_to_none=True)
        layer(u).square().mean().backward()

    return timed_peak(step, spec["device"], spec["reps"])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small grid for a CPU")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 16 on GPU, 1 on CPU)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=64, help="chunk size of the chunked scan")
    ap.add_argument("--scans", default=",".join(S5_SCANS))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    batch = args.batch or (16 if gpu else 1)
    reps = args.reps or (10 if gpu else 3)
    shapes = QUICK_SHAPES if args.quick else PAPER_SHAPES

    rows = []
    print(f"Machine: {machine('cuda' if gpu else 'cpu')}; batch {batch}; bidirectional layers; "
          f"median of {reps} forward+backward passes\n")
    print("| layer | scan | H | state | L | fwd+bwd ms | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for layer, H, n, L in shapes:
        for scan in (args.scans.split(",") if layer == "s5" else ["vandermonde+fft"]):
            spec = dict(layer=layer, scan=scan, H=H, n=n, L=L, batch=batch, reps=reps, device=args.device,
                        chunk=args.chunk)
            res = run_isolated(__file__, spec, _measure if gpu else None)
            rows.append(spec | res)
            if "error" in res:
                print(f"| {layer} | {scan} | {H} | {n} | {L} | {res['error']} | |")
            else:
                print(f"| {layer} | {scan} | {H} | {n} | {L} | {res['ms']:.1f} | {res['peak_mib']:.0f} |")
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(_measure)
    else:
        main()
