"""Forward+backward time and peak memory of one S4D layer and one S5 layer (each scan engine).

    python benchmarks/layer_speed.py            # paper shapes that fit the device (GPU: all)
    python benchmarks/layer_speed.py --quick    # a small grid, ~2 minutes on a 2-core CPU
    python benchmarks/layer_speed.py --device cpu --batch 4 --reps 3
    python benchmarks/layer_speed.py --scan-only [--triton-configs 128:32:4,256:16:4]   # the scan alone
    python benchmarks/layer_speed.py --model --batch 50   # peak memory of the 6-layer Path-X model
    python benchmarks/layer_speed.py --tiny --device cpu  # seconds: every mode on tiny shapes

On CUDA each row also reports the bytes a layer must move at least (u and y forward; the output
gradient, u again and the input gradient backward: 5·B·L·H·4 bytes, states kept on chip) and that
figure ÷ time ÷ the device's peak memory bandwidth; ``--scan-only`` does the same for one scan
direction (b read, x written: 2·B·L·P·8 bytes).

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
TINY_SHAPES = [("s5", 16, 32, 256), ("s4d", 16, 16, 256)]
S5_SCANS = {"cpu": ["lean", "chunked", "assoc", "fft"], "cuda": ["triton", "lean", "chunked", "fft"]}
# Path-X model of the LAST paper's Table 4 (experiment=s5/pathx): layers, H, P_full, J, L.
PATHX_MODEL = (6, 128, 256, 16, 16384)


def peak_bandwidth(device: str) -> float | None:
    """Peak DRAM bandwidth (bytes/s) of a CUDA device from its memory clock and bus width."""
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and width:
        return 2 * clock * 1e3 * width / 8  # double data rate, kHz → Hz, bits → bytes
    return None


def _measure(spec: dict) -> dict:
    """Time forward+backward of one layer and report its peak memory (runs in the child on CPU)."""
    import torch

    from ssmlit.models import S4D, S5

    if spec.get("mode") == "scan":
        return _measure_scan(spec)
    if spec.get("mode") == "model":
        return _measure_model(spec)
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


def _measure_scan(spec: dict) -> dict:
    """One forward scan direction of an engine on a complex64 [B, L, P] buffer (triton: with the tile
    configuration of the spec, restored afterwards)."""
    from ssmlit.models import scan_autograd

    if spec["scan"] == "triton":
        from ssmlit.models import scan_triton

        saved = dict(scan_triton.CONFIG)
        if spec.get("triton_config"):
            bt, bp, warps, progs = spec["triton_config"]
            scan_triton.CONFIG.update(block_t=bt, block_p=bp, num_warps=warps, min_programs=progs)
        try:
            return _time_scan(spec, scan_autograd)
        finally:
            scan_triton.CONFIG.update(saved)
    return _time_scan(spec, scan_autograd)


def _time_scan(spec: dict, scan_autograd) -> dict:
    import torch

    dev = torch.device(spec["device"])
    B, L, P = spec["batch"], spec["L"], spec["n"] // 2
    engine = scan_autograd.ENGINES[spec["scan"]](spec["chunk"])
    log_lam = torch.complex(-torch.rand(P, device=dev) * 0.1, torch.randn(P, device=dev))
    b = torch.randn(B, L, P, dtype=torch.complex64, device=dev)
    h = torch.empty_like(b)

    if spec["scan"] == "triton":
        from ssmlit.models.scan_triton import scan_direction

        def step():  # b read, x written
            scan_direction(b, h, log_lam, reverse=False)
    else:
        def step():  # the PyTorch engines scan in place: a copy first, as the layer does for x⁰
            h.copy_(b)
            engine.scan_(h, log_lam, False)

    return timed_peak(step, spec["device"], spec["reps"], warmup=2)


def _measure_model(spec: dict) -> dict:
    """Forward + backward of the Path-X S5 model (experiment=s5/pathx's architecture)."""
    import torch

    from ssmlit.models import SequenceModel

    torch.manual_seed(0)
    n_layers, H, P_full, J, L = spec["model"]
    model = SequenceModel(2, d_input=1, d_model=H, n_layers=n_layers, norm="batch", prenorm=True,
                          activation="half_glu1", dropout=0.0,
                          ssm=dict(d_state=P_full, blocks=J, bidirectional=True, scan=spec["scan"]))
    dev = torch.device(spec["device"])
    model = model.to(dev)
    x = torch.randn(spec["batch"], L, 1, device=dev)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    res = timed_peak(step, spec["device"], spec["reps"])
    if dev.type == "cuda":
        res["peak_total_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small grid for a CPU")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 16 on GPU, 1 on CPU)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=64, help="chunk size of the chunked scan")
    ap.add_argument("--scans", default=None, help="S5 engines (default: triton,lean,chunked,fft on CUDA, "
                    "lean,chunked,assoc,fft on CPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, every mode (a smoke run)")
    ap.add_argument("--scan-only", action="store_true", help="time one scan direction of each engine")
    ap.add_argument("--triton-configs", default="", help="with --scan-only: extra triton tile configs "
                    "BLOCK_T:BLOCK_P:WARPS:MIN_PROGRAMS, comma-separated")
    ap.add_argument("--model", action="store_true", help="the 6-layer Path-X model instead of one layer")
    ap.add_argument("--shapes", default=None, help="only these S5 rows, e.g. 128:256:16384 (H:state:L)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    batch = args.batch or (16 if gpu else 1)
    reps = args.reps or (10 if gpu else 3)
    shapes = TINY_SHAPES if args.tiny else QUICK_SHAPES if args.quick else PAPER_SHAPES
    if args.shapes:
        wanted = {tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")}
        shapes = [s for s in shapes if s[1:] in wanted] or [("s5", *w) for w in sorted(wanted)]
    scans = args.scans.split(",") if args.scans else S5_SCANS["cuda" if gpu else "cpu"]
    bw = peak_bandwidth(args.device) if gpu else None
    if gpu:
        print(f"peak memory bandwidth {bw / 1e9:.0f} GB/s" if bw else "peak memory bandwidth unknown")
    common = dict(batch=batch, reps=reps, device=args.device, chunk=args.chunk)
    if args.model:
        model = (2, 16, 32, 2, 512) if args.tiny else PATHX_MODEL
        print(f"Machine: {machine('cuda' if gpu else 'cpu')}; S5 model (layers, H, P_full, J, L) = {model}, "
              f"batch {batch}, forward + backward\n")
        print("| scan | fwd+bwd ms | peak MiB above inputs | peak MiB in all (CUDA) |")
        print("|---|---|---|---|")
        rows = []
        for scan in scans:
            spec = dict(mode="model", model=model, scan=scan, **common)
            res = run_isolated(__file__, spec, _measure if gpu else None)
            rows.append(dict(scan=scan, model=model, **common) | res)
            print(f"| {scan} | " + (res["error"] + " | | |" if "error" in res else
                                    f"{res['ms']:.1f} | {res['peak_mib']:.0f} | {res.get('peak_total_mib', 0):.0f} |"),
                  flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    if args.scan_only:
        _scan_table(args, shapes, scans, common, gpu, bw)
        return

    rows = []
    print(f"Machine: {machine('cuda' if gpu else 'cpu')}; batch {batch}; bidirectional layers; "
          f"median of {reps} forward+backward passes\n")
    print("| layer | scan | H | state | L | fwd+bwd ms | peak MiB |" + (" min GB moved | % of peak BW |" if bw else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if bw else ""))
    for layer, H, n, L in shapes:
        for scan in (scans if layer == "s5" else ["vandermonde+fft"]):
            spec = dict(layer=layer, scan=scan, H=H, n=n, L=L, **common)
            res = run_isolated(__file__, spec, _measure if gpu else None)
            if "error" not in res:
                res["min_bytes"] = 5 * batch * L * H * 4
                if bw:
                    res["bw_fraction"] = res["min_bytes"] / (res["ms"] / 1e3) / bw
            rows.append(spec | res)
            if "error" in res:
                print(f"| {layer} | {scan} | {H} | {n} | {L} | {res['error']} | |")
            else:
                extra = f" {res['min_bytes'] / 1e9:.3f} | {100 * res['bw_fraction']:.1f} % |" if bw else ""
                print(f"| {layer} | {scan} | {H} | {n} | {L} | {res['ms']:.1f} | {res['peak_mib']:.0f} |" + extra)
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _scan_table(args, shapes, scans, common, gpu, bw) -> None:
    configs = [None] + [tuple(int(v) for v in c.split(":")) for c in args.triton_configs.split(",") if c]
    print(f"Machine: {machine('cuda' if gpu else 'cpu')}; one forward scan direction, median of {common['reps']}\n")
    print("| scan | triton config | B | P | L | ms | GB moved | % of peak BW |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for layer, _H, n, L in shapes:
        if layer != "s5":
            continue
        for scan in scans:
            for cfg in configs if scan == "triton" else [None]:
                spec = dict(mode="scan", scan=scan, n=n, L=L, triton_config=cfg, **common)
                res = run_isolated(__file__, spec, _measure if gpu else None)
                rows.append(spec | res)
                if "error" in res:
                    print(f"| {scan} | {cfg} | {common['batch']} | {n // 2} | {L} | {res['error']} | | |", flush=True)
                    continue
                moved = 2 * common["batch"] * L * (n // 2) * 8
                frac = f"{100 * moved / (res['ms'] / 1e3) / bw:.1f} %" if bw else "n/a"
                print(f"| {scan} | {cfg or 'default'} | {common['batch']} | {n // 2} | {L} | {res['ms']:.2f} | "
                      f"{moved / 1e9:.3f} | {frac} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(_measure)
    else:
        main()
