"""CPU benchmark of the backends: the reference on NumPy, the torch and jax backends, and causal softmax.

p = 2 (D = 2080), d = e = 64, 4 heads, float32, T = 1024 .. 16384 (``--max-T``; ``--quick``: 1024, 2048).
Forward, and forward + backward where the implementation is differentiable (NumPy is not), the best of
``--repeats`` runs after one warm-up; the jax backend's compile time is measured apart (first call minus
a steady call). Softmax attention is torch's ``scaled_dot_product_attention(is_causal=True)``. The native
backends run the chunked form at each chunk size of ``--chunks``.

Writes a table to stdout, ``cpu_backends.csv`` and ``cpu_backends.png`` (``--name``) into ``--out``
(default benchmarks/results/). A script, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import sympow
from sympow.testing import convert, make_inputs

HEADS, D_HEAD, POWER = 4, 64, 2
FULL_GRID = (1024, 2048, 4096, 8192, 16384)
QUICK_GRID = (1024, 2048)


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed_first(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_reference(inputs: dict, chunk: int, repeats: int) -> dict:
    a = convert(inputs, np, "float32")

    def forward() -> Any:
        return sympow.attention(
            a["q"], a["k"], a["v"], power=POWER, form="chunked", chunk_size=chunk, backend="reference"
        )

    forward()
    return {"fwd": best_of(forward, repeats), "fwd_bwd": None, "compile": None}


def bench_torch(inputs: dict, chunk: int, repeats: int) -> dict:
    import torch

    t = convert(inputs, torch, "float32")
    q, k, v = (t[name].requires_grad_(True) for name in ("q", "k", "v"))
    dy = torch.randn_like(t["v"])

    def run() -> Any:
        return sympow.attention(q, k, v, power=POWER, form="chunked", chunk_size=chunk, backend="torch")

    def forward() -> Any:
        with torch.no_grad():
            return run()

    def forward_backward() -> Any:
        q.grad = k.grad = v.grad = None
        (run() * dy).sum().backward()

    forward()
    fwd = best_of(forward, repeats)
    forward_backward()
    return {"fwd": fwd, "fwd_bwd": best_of(forward_backward, repeats), "compile": None}


def bench_jax(inputs: dict, chunk: int, repeats: int) -> dict:
    import jax

    t = convert(inputs, "jax", "float32")
    q, k, v = t["q"], t["k"], t["v"]
    dy = jax.numpy.asarray(np.random.default_rng(1).standard_normal(v.shape), dtype=v.dtype)

    def attend(q: Any, k: Any, v: Any) -> Any:
        return sympow.attention(q, k, v, power=POWER, form="chunked", chunk_size=chunk, backend="jax")

    grad = jax.jit(jax.grad(lambda q, k, v: (attend(q, k, v) * dy).sum(), argnums=(0, 1, 2)))

    def forward() -> Any:
        return attend(q, k, v).block_until_ready()

    def forward_backward() -> Any:
        return jax.block_until_ready(grad(q, k, v))

    first = timed_first(forward)
    fwd = best_of(forward, repeats)
    forward_backward()
    return {"fwd": fwd, "fwd_bwd": best_of(forward_backward, repeats), "compile": max(first - fwd, 0.0)}


def available_memory() -> int:
    """Bytes of memory available now (Linux), or a very large number where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def bench_sdpa(inputs: dict, repeats: int) -> dict:
    """Softmax attention. On the CPU it materialises T x T matrices: about three in the forward and six
    in the backward, with temporaries; a phase that would not fit in the available memory is skipped
    (None), not run."""
    import torch

    t = convert(inputs, torch, "float32")
    q, k, v = (t[name].requires_grad_(True) for name in ("q", "k", "v"))
    dy = torch.randn_like(t["v"])
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def forward() -> Any:
        with torch.no_grad():
            return sdpa(q, k, v, is_causal=True)

    def forward_backward() -> Any:
        q.grad = k.grad = v.grad = None
        (sdpa(q, k, v, is_causal=True) * dy).sum().backward()

    matrix = 4 * int(np.prod(t["q"].shape[:-1])) * t["q"].shape[-2]  # bytes of one float32 score matrix
    fwd = fwd_bwd = None
    if 3 * matrix < available_memory():
        forward()
        fwd = best_of(forward, repeats)
    if 6 * matrix < available_memory():
        forward_backward()
        fwd_bwd = best_of(forward_backward, repeats)
    return {"fwd": fwd, "fwd_bwd": fwd_bwd, "compile": None}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:9.3f}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labels = sorted({(r["impl"], r["chunk"]) for r in rows}, key=str)
    for ax, key, title in zip(axes, ("fwd", "fwd_bwd"), ("forward", "forward + backward"), strict=True):
        for impl, chunk in labels:
            points = [(r["T"], r[key]) for r in rows if (r["impl"], r["chunk"]) == (impl, chunk)]
            points = [(T, s) for T, s in points if s is not None]
            if points:
                label = impl if chunk is None else f"{impl} C={chunk}"
                color = f"C{labels.index((impl, chunk)) % 10}"  # one colour per implementation in both panels
                ax.loglog(*zip(*points, strict=True), marker="o", label=label, color=color)
        ax.set_title(f"{title}: p={POWER}, d=e={D_HEAD}, {HEADS} heads, float32, CPU")
        ax.set_xlabel("T (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds (best of repeats)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small T grid (1024, 2048)")
    parser.add_argument("--max-T", type=int, default=16384, help="largest T (default 16384)")
    parser.add_argument("--T", type=str, default="", help="comma-separated T values (replaces the grid)")
    parser.add_argument("--chunks", type=str, default="64,128,256", help="chunk sizes of the native backends")
    parser.add_argument("--reference-chunk", type=int, default=64, help="chunk size of the reference")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up (best taken)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--skip", type=str, default="", help="comma-separated implementations to skip")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", type=str, default="cpu_backends", help="file name of the CSV and PNG")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    grid = [int(T) for T in args.T.split(",")] if args.T else (QUICK_GRID if args.quick else FULL_GRID)
    grid = [T for T in grid if T <= args.max_T]
    chunks = [int(c) for c in args.chunks.split(",") if c]
    skip = set(args.skip.split(",")) - {""}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; p={POWER}, d=e={D_HEAD}, "
          f"{HEADS} heads, float32; seconds, best of {args.repeats}")  # fmt: skip
    header = f"{'T':>6} {'implementation':<22} {'forward':>9} {'fwd+bwd':>9} {'compile':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    fields = ["T", "impl", "chunk", "fwd", "fwd_bwd", "compile"]
    table = open(args.out / f"{args.name}.csv", "w", newline="")
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    for T in grid:
        inputs = make_inputs(batch=(HEADS,), T=T, d=D_HEAD, e=D_HEAD, seed=0, dtype="float32")
        runs: list[tuple[str, int | None, Callable[[], dict]]] = []
        if "reference" not in skip:
            c = args.reference_chunk
            runs.append(("reference-numpy", c, lambda c=c, x=inputs: bench_reference(x, c, args.repeats)))
        for c in chunks:
            if "torch" not in skip:
                runs.append(("torch", c, lambda c=c, x=inputs: bench_torch(x, c, args.repeats)))
            if "jax" not in skip:
                runs.append(("jax", c, lambda c=c, x=inputs: bench_jax(x, c, args.repeats)))
        if "sdpa" not in skip:
            runs.append(("sdpa-causal", None, lambda x=inputs: bench_sdpa(x, args.repeats)))
        for impl, chunk, fn in runs:
            result = fn()
            row = {"T": T, "impl": impl, "chunk": chunk, **result}
            rows.append(row)
            writer.writerow(row)
            table.flush()  # a run killed later (memory) keeps what it measured
            name = impl if chunk is None else f"{impl} C={chunk}"
            print(f"{T:>6} {name:<22} {fmt(row['fwd'])} {fmt(row['fwd_bwd'])} {fmt(row['compile'])}",
                  flush=True)  # fmt: skip
    table.close()
    plot(rows, args.out / f"{args.name}.png")
    print(f"wrote {args.out / (args.name + '.csv')} and {args.out / (args.name + '.png')}")


if __name__ == "__main__":
    main()
