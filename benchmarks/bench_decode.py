"""Decoding one token at a time: a step of ``attention`` against the bare state arithmetic (issue 16).

Setting: kernel sympow p = 2, d = e = 64, 4 heads, batch 1 and 8, float32, gates on, normalised; a
prefill of 16 tokens makes the state, then each step calls

    y, state = sympow.attention(q_t, k_t, v_t, log_gate=g_t, initial_state=state, return_state=True)

with T = 1. The bare arithmetic is the same step written directly in the same library and dtype, on a
state of the same size (D = C(d + 1, 2) = 2080 features per head, in the order of ``feature_table``):

    f(x) = (x_i x_j c_ij)_{i <= j} of x = d^{-1/4} x_t,  c = 1 on the diagonal, sqrt 2 off it
    S <- exp(g_t) S + f(k_t) v_t^T,  z <- exp(g_t) z + f(k_t),  y_t = f(q_t)^T S / f(q_t)^T z

Both are timed in the same process, interleaved, each as the median over repeats of a run of
``--steps`` steps; the bare step's output is checked against attention's on the same tokens, so that it
is the same arithmetic. Modes:

- eager: a Python loop of calls (torch; jax with every jnp operation dispatched on its own);
- compiled: torch.compile(fullgraph=True) of one step (inductor), called in a Python loop with the state
  as its carry; jax.jit of a lax.scan over the steps with the state as the scan's carry.

Targets (issue 16): per step at most 5x the bare arithmetic eager, 2x compiled (torch), 1.5x (jax).
Each row also gives the state's bytes per step (one read and one write of S and z) over the step time; on
a GPU (``--gpu``: the torch backend eager and compiled, and the CuPy and Numba kernels where they run)
against the device's copy bandwidth, measured in the same run (target >= 50%). Each library and batch
runs in its own process.

    python benchmarks/bench_decode.py            # writes results/decode_cpu.{csv,png}
    python benchmarks/bench_decode.py --gpu      # writes results/decode_gpu.{csv,png}
    python benchmarks/bench_decode.py --quick    # batch 1, fewer steps and repeats
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HEADS, D_HEAD, POWER, PREFILL = 4, 64, 2, 16
TARGETS = {
    ("torch", "eager"): 5.0,
    ("jax", "eager"): 5.0,
    ("torch", "compiled"): 2.0,
    ("jax", "compiled"): 1.5,
}


def inputs(library: str, batch: int, steps: int) -> dict[str, Any]:
    from sympow.testing.inputs import convert, make_inputs

    raw = make_inputs(batch=(batch, HEADS), T=PREFILL + steps, d=D_HEAD, e=D_HEAD, gate=True, gate_min=-0.1,
                      seed=batch)  # fmt: skip
    return convert(raw, library, "float32")


def median_time(run: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pair_positions(xp: Any, d: int) -> tuple[Any, Any, Any]:
    """(i, j, c) over i <= j in ``feature_table`` order (row-major upper triangle)."""
    rows = [(i, j) for i in range(d) for j in range(i, d)]
    i = xp.asarray([r[0] for r in rows])
    j = xp.asarray([r[1] for r in rows])
    c = xp.asarray([1.0 if a == b else math.sqrt(2.0) for a, b in rows], dtype=xp.float32)
    return i, j, c


def bare_step(xp: Any, table: tuple[Any, Any, Any]) -> Any:
    i, j, c = table
    root = D_HEAD**-0.25

    def features(x: Any) -> Any:
        x = x * root
        return x[..., i] * x[..., j] * c

    def step(S: Any, z: Any, q: Any, k: Any, v: Any, g: Any) -> tuple[Any, Any, Any]:
        fq, fk = features(q), features(k)
        gamma = xp.exp(g)[..., None]
        S = gamma[..., None] * S + fk[..., :, None] * v[..., None, :]
        z = gamma * z + fk
        y = (fq[..., None, :] @ S)[..., 0, :] / xp.sum(fq * z, axis=-1, keepdims=True)
        return S, z, y

    return step


def measure_torch(
    batch: int, steps: int, repeats: int, modes: list[str], device: str = "cpu", backend: str | None = None
) -> list[dict]:
    import torch

    import sympow

    torch.set_num_threads(2)
    x = inputs("torch", batch, steps)
    q, k, v, g = (x[name].to(device) for name in ("q", "k", "v", "log_gate"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    _, prefilled = sympow.attention(q[..., :PREFILL, :], k[..., :PREFILL, :], v[..., :PREFILL, :],
                                    log_gate=g[..., :PREFILL], return_state=True)  # fmt: skip
    tokens = [(q[..., t : t + 1, :], k[..., t : t + 1, :], v[..., t : t + 1, :], g[..., t : t + 1])
              for t in range(PREFILL, PREFILL + steps)]  # fmt: skip
    S0, z0 = prefilled.unscaled()
    bare_tokens = [(a[..., 0, :], b[..., 0, :], c[..., 0, :], h[..., 0]) for a, b, c, h in tokens]

    def attend(state: Any, qt: Any, kt: Any, vt: Any, gt: Any) -> Any:
        return sympow.attention(
            qt, kt, vt, log_gate=gt, initial_state=state, return_state=True, backend=backend
        )

    bare = bare_step(torch, tuple(a.to(device) for a in pair_positions(torch, D_HEAD)))
    rows = []
    for mode in modes:
        step, plain = attend, bare
        if mode == "compiled":
            torch._dynamo.reset()
            step = torch.compile(attend, fullgraph=True)
            plain = torch.compile(bare, fullgraph=True)

        def run_attention(step: Any = step) -> list[Any]:
            state, ys = prefilled, []
            for token in tokens:
                y, state = step(state, *token)
                ys.append(y)
            sync()
            return ys

        def run_bare(plain: Any = plain) -> list[Any]:
            S, z, ys = S0, z0, []
            for token in bare_tokens:
                S, z, y = plain(S, z, *token)
                ys.append(y)
            sync()
            return ys

        ours, reference = run_attention(), run_bare()  # also the compilations
        agreement = max(
            float((a[..., 0, :] - b).abs().max() / b.abs().max())
            for a, b in zip(ours, reference, strict=True)
        )
        where = {"device": device, "backend": backend or "torch", "peak_gbps": peak_bandwidth(device)}
        rows.append(row("torch", mode, batch, steps, repeats, run_attention, run_bare, agreement, **where))
    return rows


def peak_bandwidth(device: str) -> float | None:
    """GB/s of a 1 GiB device-to-device copy (read and write counted), on CUDA; None on the CPU."""
    if device != "cuda":
        return None
    import torch

    a = torch.empty(2**28, dtype=torch.float32, device="cuda")
    a.clone()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a.clone()
    torch.cuda.synchronize()
    return 10 * 2 * a.nbytes / (time.perf_counter() - start) / 1e9


def measure_jax(batch: int, steps: int, repeats: int, modes: list[str]) -> list[dict]:
    import jax.numpy as jnp

    import sympow

    x = inputs("jax", batch, steps)
    q, k, v, g = x["q"], x["k"], x["v"], x["log_gate"]
    _, prefilled = sympow.attention(q[..., :PREFILL, :], k[..., :PREFILL, :], v[..., :PREFILL, :],
                                    log_gate=g[..., :PREFILL], return_state=True)  # fmt: skip
    S0, z0 = prefilled.unscaled()
    bare = bare_step(jnp, pair_positions(jnp, D_HEAD))
    # [steps, batch, heads, ...]: the token axis first, as lax.scan takes it
    xs = tuple(
        jnp.moveaxis(a[..., PREFILL:, :] if a.ndim == 4 else a[..., PREFILL:], 2, 0) for a in (q, k, v, g)
    )

    def attend(state: Any, token: Any) -> Any:
        qt, kt, vt, gt = token
        y, state = sympow.attention(
            qt[..., None, :], kt[..., None, :], vt[..., None, :], log_gate=gt[..., None],
            initial_state=state, return_state=True,
        )  # fmt: skip
        return state, y[..., 0, :]

    def plain(carry: Any, token: Any) -> Any:
        S, z, y = bare(*carry, *token)
        return (S, z), y

    rows = []
    for mode in modes:
        run_attention, run_bare = jax_runs(mode, attend, plain, prefilled, (S0, z0), xs)
        ours, reference = run_attention(), run_bare()  # also the compilations
        agreement = float(jnp.max(jnp.abs(ours - reference)) / jnp.max(jnp.abs(reference)))
        rows.append(row("jax", mode, batch, steps, repeats, run_attention, run_bare, agreement))
    return rows


def jax_runs(mode: str, attend: Any, plain: Any, state: Any, carry: Any, xs: Any) -> tuple[Any, Any]:
    """(run of attention, run of the bare step) over the tokens ``xs``: a Python loop of eager calls, or
    one jax.jit of a lax.scan."""
    import jax
    import jax.numpy as jnp

    if mode == "compiled":
        scan_attention = jax.jit(lambda s, xs: jax.lax.scan(attend, s, xs)[1])
        scan_bare = jax.jit(lambda c, xs: jax.lax.scan(plain, c, xs)[1])
        return (lambda: jax.block_until_ready(scan_attention(state, xs)),
                lambda: jax.block_until_ready(scan_bare(carry, xs)))  # fmt: skip
    tokens = [tuple(a[t] for a in xs) for t in range(xs[0].shape[0])]

    def loop(step: Any, start: Any) -> Any:
        current, ys = start, []
        for token in tokens:
            current, y = step(current, token)
            ys.append(y)
        return jax.block_until_ready(jnp.stack(ys))

    return (lambda: loop(attend, state)), (lambda: loop(plain, carry))


def row(library: str, mode: str, batch: int, steps: int, repeats: int, ours: Any, bare: Any,
        agreement: float, device: str = "cpu", backend: str | None = None,
        peak_gbps: float | None = None) -> dict:  # fmt: skip
    """Both runs timed interleaved (ours, bare, ours, ...), so that drift in the machine hits both. The
    state's bytes per step are one read and one write of S and z (float32), the least any step moves."""
    ours_times, bare_times = [], []
    for _ in range(repeats):
        ours_times.append(median_time(ours, 1))
        bare_times.append(median_time(bare, 1))
    step_ms = 1e3 * statistics.median(ours_times) / steps
    bare_ms = 1e3 * statistics.median(bare_times) / steps
    state_bytes = 2 * 4 * batch * HEADS * math.comb(D_HEAD + 1, 2) * (D_HEAD + 1)
    gbps = state_bytes / (step_ms / 1e3) / 1e9
    result = {
        "library": library, "device": device, "backend": backend or library, "mode": mode, "batch": batch,
        "step_ms": step_ms, "bare_ms": bare_ms, "ratio": step_ms / bare_ms,
        "target": TARGETS[(library, mode)] if device == "cpu" else None, "agreement": agreement,
        "state_gbps": gbps, "of_bandwidth": None if peak_gbps is None else gbps / peak_gbps,
    }  # fmt: skip
    bandwidth = (
        "" if peak_gbps is None else f" = {result['of_bandwidth']:.0%} of {peak_gbps:.0f} (target 50%)"
    )
    print(
        f"{library:5s} {device:4s} {backend or library:9s} {mode:8s} batch {batch}: step {step_ms:7.3f} ms  "
        f"bare {bare_ms:7.3f} ms  ratio {result['ratio']:5.2f} (target <= {result['target']})  "
        f"state {gbps:6.1f} GB/s{bandwidth}  bare vs ours {agreement:.1e}",
        flush=True,
    )
    return result


def measure(library: str, batch: int, steps: int, repeats: int, modes: list[str]) -> list[dict]:
    if library == "jax":
        return measure_jax(batch, steps, repeats, modes)
    return measure_torch(batch, steps, repeats, modes)


def measure_gpu(batch: int, steps: int, repeats: int) -> list[dict]:
    """CUDA: the torch backend (eager and compiled) and the CUDA kernel backends (eager) that run here."""
    import sympow

    here = {entry.name for entry in sympow.backends.available() if entry.available}
    rows = measure_torch(batch, steps, repeats, ["eager", "compiled"], "cuda", "torch")
    for backend in ("cupy", "numba"):
        if backend in here:
            rows += measure_torch(batch, steps, repeats, ["eager"], "cuda", backend)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['backend']} {r['mode']}\n{r['device']} batch {r['batch']}" for r in rows]
    ax.bar(labels, [r["ratio"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        if r["target"] is not None:
            ax.plot([i - 0.4, i + 0.4], [r["target"]] * 2, color="tab:red")
        ax.text(i, r["ratio"], f"{r['step_ms']:.2f} ms", ha="center", va="bottom", fontsize=7)
    title = f"decode step / bare arithmetic, p={POWER}, d=e={D_HEAD}, {HEADS} heads, gates (red: target)"
    ax.set(ylabel="time per step, ratio", title=title)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 1, 16 steps, 3 repeats")
    parser.add_argument("--libraries", default="torch,jax")
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gpu", action="store_true", help="CUDA: torch backend and kernels, batches 8, 64")
    parser.add_argument("--name", default=None, help="default decode_cpu, or decode_gpu with --gpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    if args.gpu and not args.quick:
        batches = [8, 64]
    steps, repeats = (16, 3) if args.quick else (args.steps, args.repeats)
    modes = args.modes.split(",")
    args.name = args.name or ("decode_gpu" if args.gpu else "decode_cpu")
    rows = []
    for library in ["torch"] if args.gpu else args.libraries.split(","):
        for batch in batches:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                if args.gpu:
                    rows += pool.submit(measure_gpu, batch, steps, repeats).result()
                else:
                    rows += pool.submit(measure, library, batch, steps, repeats, modes).result()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / f"{args.name}.png")
    print(f"wrote {args.out / args.name}.csv and .png")


if __name__ == "__main__":
    main()
