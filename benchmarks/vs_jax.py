"""One bidirectional S5 layer, forward + backward, in ssmlit and in the S5 paper's JAX formulation,
with identical parameters, on the CPU.

    pip install -e '.[bench]'                      # jax (CPU wheel)
    python benchmarks/vs_jax.py                    # the four shapes below, 2 threads, 7 rounds
    python benchmarks/vs_jax.py --tiny --rounds 2  # seconds: proves the comparison runs
    python benchmarks/vs_jax.py --threads 2 --engines auto,chunked,assoc --json vs_jax.json

The JAX side follows the S5 paper (Smith et al. 2023, Sec. 3 and App. A; lindermanlab/S5's
``apply_ssm``): ZOH discretization Λ̄ = exp(ΛΔ), B̄ = Λ⁻¹(Λ̄ − I)B̃; the pairs (Λ̄, B̄u_k) combined by
``jax.lax.associative_scan`` with (a₁, b₁)∘(a₂, b₂) = (a₂a₁, a₂b₁ + b₂), once forward and once with
``reverse=True``; y_k = 2·Re(C̃x_k) + D⊙u_k; the whole layer vmapped over the batch, and
``jax.jit(jax.value_and_grad(loss))`` with respect to every parameter and the input. ssmlit's layer
gets the same float32 parameters; outputs must agree to 1e-5 (relative), else the script stops.

Timing: both frameworks pinned to the same cores (``os.sched_setaffinity`` before either is
imported, and matching torch/XLA thread counts), one warm-up each (JAX compiles there), then the
two timed alternately ``--rounds`` times; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# (batch, L, H, P_full): the shapes of issue 14 (Path-X-like at the end).
SHAPES = [(4, 1024, 128, 64), (4, 1024, 128, 256), (2, 4096, 128, 256), (1, 16384, 128, 256)]
TINY = [(2, 64, 8, 16), (1, 256, 16, 32)]


def pin(threads: int) -> None:
    """Restrict this process (and so XLA's and torch's thread pools) to ``threads`` cores."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={threads > 1}"
                               f" intra_op_parallelism_threads={threads}").strip()


def jax_layer(bidirectional: bool):
    """value_and_grad of mean(y²) for the paper's S5 layer, jitted; params as a dict of arrays."""
    import jax
    import jax.numpy as jnp

    def binary_operator(q_i, q_j):
        a_i, b_i = q_i
        a_j, b_j = q_j
        return a_j * a_i, a_j * b_i + b_j

    def apply_ssm(lam_bar, B_bar, C, D, u):  # u: [L, H]
        Bu = jax.vmap(lambda u_k: B_bar @ u_k)(u.astype(jnp.complex64))  # [L, P]
        elems = jnp.broadcast_to(lam_bar, Bu.shape)
        _, xs = jax.lax.associative_scan(binary_operator, (elems, Bu))
        y = jax.vmap(lambda x: 2 * (C[0] @ x).real)(xs)
        if bidirectional:
            _, xs_b = jax.lax.associative_scan(binary_operator, (elems, Bu), reverse=True)
            y = y + jax.vmap(lambda x: 2 * (C[1] @ x).real)(xs_b)
        return y + D * u

    def loss(params, u):
        Lambda = params["Lambda_re"] + 1j * params["Lambda_im"]
        Delta = jnp.exp(params["log_step"])
        lam_bar = jnp.exp(Lambda * Delta)
        B = params["B"][..., 0] + 1j * params["B"][..., 1]
        B_bar = ((lam_bar - 1) / Lambda)[:, None] * B
        C = params["C"][..., 0] + 1j * params["C"][..., 1]
        y = jax.vmap(apply_ssm, in_axes=(None, None, None, None, 0))(lam_bar, B_bar, C, params["D"], u)
        return jnp.mean(y ** 2), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def compare(shape, engines, rounds: int) -> dict:
    import jax
    import numpy as np
    import torch

    from ssmlit.models import S5

    B, L, H, P_full = shape
    torch.manual_seed(0)
    layers = {e: S5(H, P_full, blocks=max(1, P_full // 16), bidirectional=True, scan=e) for e in engines}
    first = layers[engines[0]]
    for layer in layers.values():
        layer.load_state_dict(first.state_dict())
    u = torch.randn(B, L, H)
    params = {n: jax.numpy.asarray(p.detach().numpy()) for n, p in first.named_parameters()}
    u_j = jax.numpy.asarray(u.numpy())
    step = jax_layer(True)

    def run_jax():
        (_, y), grads = step(params, u_j)
        jax.block_until_ready(grads)
        return y, grads

    def run_torch(layer, uu):
        layer.zero_grad(set_to_none=True)
        y = layer(uu)
        y.square().mean().backward()
        return y

    y_j, (g_params, g_u) = run_jax()
    y_j = np.asarray(y_j)

    def rel(a, b):
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))

    res = {"shape": shape, "ms": {}, "rel_err": {}, "grad_rel_err": {}}
    for e, layer in layers.items():
        uu = u.clone().requires_grad_()
        y_t = run_torch(layer, uu).detach().numpy()
        res["rel_err"][e] = err = rel(y_t, y_j)
        if err > 1e-5:
            raise SystemExit(f"outputs differ at {shape} with scan={e}: relative error {err:.2e} > 1e-5")
        grads = {"u": rel(uu.grad.numpy(), g_u)}
        grads |= {n: rel(p.grad.numpy(), g_params[n]) for n, p in layer.named_parameters()}
        res["grad_rel_err"][e] = max(grads.values())
    times = {k: [] for k in ("jax", *engines)}
    for _ in range(rounds):
        t = time.perf_counter()
        run_jax()
        times["jax"].append(time.perf_counter() - t)
        for e, layer in layers.items():
            uu = u.clone().requires_grad_()
            t = time.perf_counter()
            run_torch(layer, uu)
            times[e].append(time.perf_counter() - t)
    res["ms"] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--engines", default="auto,chunked,assoc", help="ssmlit scan engines to time")
    ap.add_argument("--tiny", action="store_true", help="two tiny shapes (a smoke run)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pin(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax
    import torch

    torch.set_num_threads(args.threads)
    jax.config.update("jax_platforms", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine

    engines = args.engines.split(",")
    print(f"Machine: {machine('cpu')}; jax {jax.__version__}; cores {sorted(os.sched_getaffinity(0))}; "
          f"bidirectional S5, forward + backward, median of {args.rounds} interleaved rounds\n")
    print("| (B, L, H, P_full) | JAX ms | " + " | ".join(f"ssmlit {e} ms | JAX/{e}" for e in engines) + " |")
    print("|---|---|" + "---|---|" * len(engines))
    rows = []
    for shape in TINY if args.tiny else SHAPES:
        r = compare(shape, engines, args.rounds)
        rows.append(r)
        cells = " | ".join(f"{r['ms'][e]:.1f} | {r['ms']['jax'] / r['ms'][e]:.2f}×" for e in engines)
        print(f"| {shape} | {r['ms']['jax']:.1f} | {cells} |", flush=True)
    print("\nlargest relative difference to JAX: outputs "
          f"{max(max(r['rel_err'].values()) for r in rows):.1e}, gradients (u and every parameter) "
          f"{max(max(r['grad_rel_err'].values()) for r in rows):.1e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
