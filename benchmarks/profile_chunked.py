"""Where the reference's chunked form spends its time: torch.profiler's table for one call on torch (CPU).

The shapes of issue 2's benchmark (bench_forms.py): kernel sympow p = 2, d = e = 64, 4 heads, float32
inputs. The table separates the state-path matmuls (aten::bmm) from the elementwise work of building the
features (aten::mul, aten::add) and the pairs gather (aten::index_select).

    python benchmarks/profile_chunked.py                    # T = 16384, C = 64
    python benchmarks/profile_chunked.py --T 16384 --chunk 128
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sympow
from sympow.testing.inputs import convert, make_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--rows", type=int, default=12, help="rows of the profiler's table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x = convert(make_inputs(batch=(4,), T=args.T, d=64, e=64, seed=args.T), "torch", "float32")

    def call() -> torch.Tensor:
        return sympow.attention(
            x["q"], x["k"], x["v"], power=2, form="chunked", chunk_size=args.chunk, backend="reference"
        )

    call()
    start = time.perf_counter()
    call()
    print(f"T = {args.T}, C = {args.chunk}: {time.perf_counter() - start:.3f} s (unprofiled)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
