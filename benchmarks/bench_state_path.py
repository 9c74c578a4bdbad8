"""Throughput of the chunked form against the machine's matmul rate, per backend and state dtype (issue 11).

Setting: kernel sympow p = 2, d = e = 64, 4 heads, T = 16384, float32 inputs, no gates. FLOPs are counted
as T H (64 (d + e) + 4 D (e + 1)), D = C(d + 1, 2) = 2080, whatever chunk size runs (the intra-chunk
attention at C = 64 plus the state path's two matmuls per token, math.md 6). The matmul rate is that of a
2048 x 2048 product in the same library and dtype, measured in the same process just before. Each
library runs in its own process (NumPy's BLAS threads slow torch's when they share one).

Rows: the torch and jax backends and the reference on NumPy, with the state path in float32 (the default
for float32 inputs, math.md 9) and in float64 (``state_dtype="float64"``); each against the matmul rate of
the state path's dtype. Targets (issue 11): float32 >= 45% (torch, jax), >= 30% (NumPy); float64 >= 35%.

    python benchmarks/bench_state_path.py                       # writes results/state_path_cpu.{csv,png}
    python benchmarks/bench_state_path.py --name before         # e.g. with PYTHONPATH of an older checkout
    python benchmarks/bench_state_path.py --quick               # T = 2048, one repeat
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HEADS, D_HEAD, POWER = 4, 64, 2
BACKENDS = {"torch": "torch", "jax": "jax", "numpy": "reference"}
TARGETS = {("torch", "float32"): 0.45, ("jax", "float32"): 0.45, ("numpy", "float32"): 0.30}


def counted_flops(T: int, d: int = D_HEAD, e: int = D_HEAD, heads: int = HEADS) -> float:
    features = math.comb(d + POWER - 1, POWER)
    return T * heads * (64 * (d + e) + 4 * features * (e + 1))


def best_time(fn: Any, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(library: str, T: int, chunks: list[int], repeats: int) -> list[dict]:
    """Rows for one library, in this (fresh) process."""
    import sympow
    from sympow.testing.inputs import convert, make_inputs

    if library == "torch":
        import torch

        torch.set_num_threads(2)
    if library == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    has_state_dtype = "state_dtype" in inspect.signature(sympow.attention).parameters
    inputs = convert(make_inputs(batch=(HEADS,), T=T, d=D_HEAD, e=D_HEAD, seed=T), library, "float32")
    square = make_inputs(T=2048, d=2048, e=1, seed=1)["q"]
    peaks = {}
    for dtype in ("float32", "float64"):
        a = convert({"a": square}, library, dtype)["a"]

        def product(a: Any = a) -> Any:
            return (a @ a).block_until_ready() if library == "jax" else a @ a

        peaks[dtype] = 2 * 2048**3 / best_time(product, 5) / 1e9
    rows = []
    for state_dtype in ("float32", "float64"):
        if not has_state_dtype and state_dtype == "float32":
            continue  # before issue 11 there was one state path (float64)
        for chunk in chunks:
            options = {"state_dtype": state_dtype} if has_state_dtype else {}

            def call(chunk: int = chunk, options: dict = options) -> Any:
                y = sympow.attention(
                    inputs["q"], inputs["k"], inputs["v"], power=POWER, form="chunked", chunk_size=chunk,
                    backend=BACKENDS[library], **options,
                )  # fmt: skip
                return y.block_until_ready() if library == "jax" else y

            seconds = best_time(call, repeats)
            gflops = counted_flops(T) / seconds / 1e9
            row = {
                "library": library, "state_dtype": state_dtype, "chunk": chunk, "T": T, "seconds": seconds,
                "gflops": gflops, "matmul_gflops": peaks[state_dtype],
                "of_matmul": gflops / peaks[state_dtype],
                "target": TARGETS.get((library, state_dtype), 0.35 if state_dtype == "float64" else None),
            }  # fmt: skip
            rows.append(row)
            print(
                f"{library:6s} state {state_dtype}  C={chunk:4d}  {seconds:.3f} s  {gflops:6.1f} GFLOP/s  "
                f"= {row['of_matmul']:.1%} of {peaks[state_dtype]:.0f}  (target {row['target']})",
                flush=True,
            )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {}
    for r in rows:
        key = (r["library"], r["state_dtype"])
        if key not in best or r["of_matmul"] > best[key]["of_matmul"]:
            best[key] = r
    labels = [f"{lib}\n{sd} state" for lib, sd in best]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, [100 * r["of_matmul"] for r in best.values()], color="tab:blue")
    for i, r in enumerate(best.values()):
        if r["target"]:
            ax.plot([i - 0.4, i + 0.4], [100 * r["target"]] * 2, color="tab:red")
    title = f"chunked form, T={rows[0]['T']}, p={POWER}, d=e={D_HEAD}, {HEADS} heads (red: target)"
    ax.set(ylabel="% of the matmul GFLOP/s (same dtype)", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="T = 2048, one repeat")
    parser.add_argument("--libraries", default="torch,jax,numpy")
    parser.add_argument("--chunks", default="64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="state_path_cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    T, repeats = (2048, 1) if args.quick else (16384, args.repeats)
    chunks = [int(c) for c in args.chunks.split(",")]
    rows = []
    for library in args.libraries.split(","):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows += pool.submit(measure, library, T, chunks, repeats).result()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / f"{args.name}.png")
    print(f"wrote {args.out / args.name}.csv and .png")


if __name__ == "__main__":
    main()
