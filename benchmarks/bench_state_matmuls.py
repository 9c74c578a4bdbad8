"""The matmuls alone of the chunked form's state path: an upper bound on its GFLOP/s.

Issue 2's throughput target asks the chunked form to sustain 40% of the machine's matmul GFLOP/s. This
script times only the two products per chunk that the chunked form performs, f(Q_c)^T-blocks times the
state and f(K_c) times [V_c | 1], with the shapes it uses (p = 2, d = e = 64, 4 heads, T = 16384, the
feature row blocks of ``spec.feature_blocks``), on random operands, in the state dtype (float64, see
spec/prepare.py) and in float32 for comparison. No features are built and no state is updated, so the
chunked form cannot run faster than this.

    python benchmarks/bench_state_matmuls.py          # prints a table, writes results/state_matmuls.csv
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from sympow.spec.feature_blocks import layout

HEADS, D_HEAD, POWER, T = 4, 64, 2, 16384
CHUNKS = (64, 128, 256)


def square_gflops(library: str, dtype: str, n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    if library == "torch":
        import torch

        a = torch.from_numpy(a)
    a @ a
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * n**3 / (time.perf_counter() - start) / 1e9


def state_matmuls(library: str, dtype: str, chunk: int) -> float:
    """Seconds of the chunked form's state-path products over T tokens."""
    rng = np.random.default_rng(1)
    heights = [len(block.rows) for block in layout(D_HEAD, (POWER,))]
    features = [rng.standard_normal((HEADS, h, chunk)).astype(dtype) for h in heights]
    states = [rng.standard_normal((HEADS, h, D_HEAD + 1)).astype(dtype) for h in heights]
    values = rng.standard_normal((HEADS, chunk, D_HEAD + 1)).astype(dtype)
    if library == "torch":
        import torch

        features, states = [torch.from_numpy(f) for f in features], [torch.from_numpy(s) for s in states]
        values = torch.from_numpy(values)

    def one_pass() -> None:
        for _ in range(T // chunk):
            for f, s in zip(features, states, strict=True):
                f.swapaxes(-1, -2) @ s  # queries against the state
                f @ values  # the chunk's keys into the state

    one_pass()
    start = time.perf_counter()
    one_pass()
    return time.perf_counter() - start


def run(library: str) -> list[dict]:
    if library == "torch":
        import torch

        torch.set_num_threads(2)
    flops = HEADS * T * 4 * math.comb(D_HEAD + POWER - 1, POWER) * (D_HEAD + 1)
    peak32, rows = square_gflops(library, "float32"), []
    for dtype in ("float64", "float32"):
        peak = square_gflops(library, dtype)
        for chunk in CHUNKS:
            seconds = state_matmuls(library, dtype, chunk)
            row = {"library": library, "dtype": dtype, "chunk": chunk, "seconds": seconds,
                   "gflops": flops / seconds / 1e9, "of_matmul_same_dtype": flops / seconds / 1e9 / peak,
                   "of_matmul_float32": flops / seconds / 1e9 / peak32}  # fmt: skip
            rows.append(row)
            print(
                "  "
                + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            )
    return rows


def main() -> None:
    rows = []
    for library in ("numpy", "torch"):  # one process each: NumPy's BLAS threads spin after a call
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows += pool.submit(run, library).result()
    out = Path(__file__).parent / "results" / "state_matmuls.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
