"""Time the three forms of the reference (spec) on the CPU, and the chunked form's achieved GFLOP/s.

Issue 2's benchmark: NumPy and PyTorch (CPU), kernel sympow p = 2, d = e = 64, 4 heads, T = 1024 .. 16384,
float32 inputs. The chunked form's FLOPs are counted from the matmuls it performs (math.md section 6):
per token and head 2 C (d + e) for the intra-chunk scores and values, and 4 D (e + 1) for the chunk states
and their queries (phi(K)^T [V | 1] and phi(Q) [S | z]); the machine's matmul GFLOP/s is measured in the
same run, on square products in float64 and float32. The state path runs in the default state dtype,
float32 for these float32 inputs (math.md 9); bench_state_path.py has the table per state dtype.

    python benchmarks/bench_forms.py                 # full grid, writes benchmarks/results/forms_cpu.*
    python benchmarks/bench_forms.py --quick         # T = 256, 512 only
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import sympow
from sympow.testing.inputs import convert, make_inputs

HEADS, D_HEAD, POWER = 4, 64, 2


def best_time(fn: Any, repeats: int, budget_s: float = 20.0) -> float:
    """The fastest of ``repeats`` runs (after one warm-up), stopping early once ``budget_s`` is spent."""
    fn()
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return best


def matmul_gflops(library: str, dtype: str, n: int = 2048) -> float:
    """GFLOP/s of an n x n x n matrix product: 2 n^3 / time."""
    x = convert({"a": make_inputs(T=n, d=n, e=1, seed=1)["q"]}, library, dtype)["a"]
    return 2 * n**3 / best_time(lambda: x @ x, 5) / 1e9


def chunked_flops(T: int, chunk: int, d: int = D_HEAD, e: int = D_HEAD, heads: int = HEADS) -> float:
    features = math.comb(d + POWER - 1, POWER)
    return heads * T * (2 * chunk * (d + e) + 4 * features * (e + 1))


def run(library: str, grid: list[int], forms: list[str], chunk: int, recurrent_max: int) -> list[dict]:
    import torch

    torch.set_num_threads(2)
    rows = []
    peak_state = matmul_gflops(library, "float64")
    peak32 = matmul_gflops(library, "float32")
    print(f"{library}: matmul {peak32:.1f} GFLOP/s float32, {peak_state:.1f} GFLOP/s float64")
    for T in grid:
        inputs = convert(make_inputs(batch=(HEADS,), T=T, d=D_HEAD, e=D_HEAD, seed=T), library, "float32")
        for form in forms:
            if form == "recurrent" and T > recurrent_max:
                continue

            def call(form: str = form, inputs: dict = inputs) -> Any:
                return sympow.attention(
                    inputs["q"], inputs["k"], inputs["v"], power=POWER, form=form, chunk_size=chunk,
                    backend="reference",
                )  # fmt: skip

            seconds = best_time(call, 3 if T <= 4096 else 1)
            row = {"library": library, "form": form, "T": T, "seconds": seconds}
            if form == "chunked":
                gflops = chunked_flops(T, chunk) / seconds / 1e9
                row |= {
                    "gflops": gflops,
                    "of_matmul_float64": gflops / peak_state,
                    "of_matmul_float32": gflops / peak32,
                }
            rows.append(row)
            cells = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            print("  " + ", ".join(cells), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for library in sorted({r["library"] for r in rows}):
        for form in ("parallel", "chunked", "recurrent"):
            pts = [(r["T"], r["seconds"]) for r in rows if r["library"] == library and r["form"] == form]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{library} {form}")
    ax.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel="seconds (forward)",
           title=f"sympow reference on the CPU: p={POWER}, d=e={D_HEAD}, {HEADS} heads, float32")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="T = 256, 512 only")
    parser.add_argument("--libraries", default="numpy,torch")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--recurrent-max", type=int, default=4096, help="largest T for the recurrent form")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    grid = [256, 512] if args.quick else [1024, 2048, 4096, 8192, 16384]
    rows = []
    for library in args.libraries.split(","):
        # a fresh process per library: NumPy's BLAS threads keep spinning after a call and would slow
        # PyTorch's threads (measured: 10%) if both ran in one process
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            forms = ["parallel", "chunked", "recurrent"]
            rows += pool.submit(run, library, grid, forms, args.chunk, args.recurrent_max).result()
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["library", "form", "T", "seconds", "gflops", "of_matmul_float64", "of_matmul_float32"]
    with open(args.out / "forms_cpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "forms_cpu.png")
    print(f"wrote {args.out / 'forms_cpu.csv'} and {args.out / 'forms_cpu.png'}")


if __name__ == "__main__":
    main()
