"""Time the GPU kernels: prefill (chunked) against softmax attention, and the decode step against bandwidth.

Issue 5's benchmark, on a CUDA GPU (it prints why and exits where there is none):

- prefill: kernel sympow p = 2, d = e = 64, batch x heads = 8, T = 4096 .. 65536, bfloat16 PyTorch CUDA
  inputs: the CuPy chunked kernels (backend="cupy"), the Numba chunked kernels (backend="numba"), the
  torch backend (backend="torch"), causal softmax through torch's scaled_dot_product_attention (flash),
  and power-attention's ``power_full`` (deg 2, chunk 128) where that package imports.
- decode: one token for batch x heads = 64, p = 2, d = e = 64, from a state, in the recurrent form: time
  per step and the bytes it must move (the state S and z read and written once in float32, plus q, k, v
  and y) per second, against the GPU's memory bandwidth (2 x memory clock x bus width, from the device
  attributes, else a table of known parts).

Times are medians of CUDA-event-timed runs after warm-up. Writes benchmarks/results/gpu_kernels.{csv,png}
and prints the table.

    python benchmarks/bench_gpu_kernels.py            # full grid
    python benchmarks/bench_gpu_kernels.py --quick    # T = 4096, 8192
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import sympow
from sympow.testing.inputs import make_inputs

HEADS, D_HEAD, POWER, DECODE_HEADS = 8, 64, 2, 64
GRID = [4096, 8192, 16384, 32768, 65536]
# Peak memory bandwidth (bytes/s) of common parts, when the device attributes do not give it.
KNOWN_BANDWIDTH = {
    "H200": 4.8e12, "H100 SXM": 3.35e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12, "L40S": 8.64e11,
    "L4": 3.0e11, "A10": 6.0e11, "RTX 4090": 1.008e12, "RTX 3090": 9.36e11,
}  # fmt: skip


def gpu_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    return None


def cuda_time(fn: Any, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` by CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def bandwidth() -> tuple[float, str]:
    """(peak bytes/s, where it came from) of the current GPU."""
    import torch

    name = torch.cuda.get_device_name()
    try:
        import cupy

        runtime = cupy.cuda.runtime
        device = cupy.cuda.Device().id
        clock_khz = runtime.deviceGetAttribute(runtime.cudaDevAttrMemoryClockRate, device)
        bus_bits = runtime.deviceGetAttribute(runtime.cudaDevAttrGlobalMemoryBusWidth, device)
        if clock_khz > 0 and bus_bits > 0:
            return 2 * clock_khz * 1e3 * bus_bits / 8, "device attributes (2 x clock x bus width)"
    except Exception:  # no CuPy, or attributes removed from this CUDA version
        pass
    for part, value in KNOWN_BANDWIDTH.items():
        if part in name:
            return value, f"table entry {part!r}"
    return math.nan, f"unknown part {name!r}"


def tensors(T: int, heads: int, seed: int = 0) -> dict[str, Any]:
    import torch

    raw = make_inputs(batch=(heads,), T=T, d=D_HEAD, e=D_HEAD, seed=seed)
    return {k: torch.tensor(v, dtype=torch.bfloat16, device="cuda") for k, v in raw.items()}


def prefill_methods() -> dict[str, Any]:
    import torch

    def ours(backend: str) -> Any:
        return lambda x: sympow.attention(
            x["q"], x["k"], x["v"], power=POWER, form="chunked", chunk_size=64, backend=backend
        )

    def softmax(x: dict[str, Any]) -> Any:
        q, k, v = (x[n][None] for n in ("q", "k", "v"))  # [1, heads, T, d]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    methods = {"cupy chunked": ours("cupy"), "numba chunked": ours("numba"), "torch chunked": ours("torch")}
    methods["softmax sdpa (flash)"] = softmax
    try:
        from power_attention import power_full

        def power_attention(x: dict[str, Any]) -> Any:
            q, k, v = (x[n].transpose(0, 1)[None] for n in ("q", "k", "v"))  # [1, T, heads, d]
            return power_full(Q=q, K=k, V=v, log_G=None, deg=POWER, chunk_size=128)

        methods["power-attention 1.4.4"] = power_attention
    except Exception as error:  # not installed, or no build for this GPU / CUDA
        print(f"power-attention not measured: {error}", file=sys.stderr)
    return methods


def measure(fn: Any, inputs: dict[str, Any]) -> tuple[float, str]:
    """(seconds or nan, note): failures (out of memory, unsupported) are recorded, not raised."""
    import torch

    try:
        return cuda_time(lambda: fn(inputs)), ""
    except Exception as error:
        torch.cuda.empty_cache()
        return math.nan, f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"


def run_prefill(grid: list[int]) -> list[dict]:
    rows = []
    methods = prefill_methods()
    for T in grid:
        inputs = tensors(T, HEADS)
        for name, fn in methods.items():
            seconds, note = measure(fn, inputs)
            rows.append({"bench": "prefill", "method": name, "T": T, "heads": HEADS, "seconds": seconds,
                         "tokens_per_s": HEADS * T / seconds, "note": note})  # fmt: skip
            print(f"prefill T={T:6d} {name:24s} {seconds * 1e3:10.3f} ms {note}", flush=True)
        del inputs
    return rows


def run_decode(prefix: int = 256) -> list[dict]:
    """One token for 64 heads from the state of a ``prefix``-token prefill, per backend."""
    peak, source = bandwidth()
    D = math.comb(D_HEAD + POWER - 1, POWER)
    # S and z read and written once (float32), q, k, v read and y written (bfloat16)
    moved = DECODE_HEADS * (2 * 4 * D * (D_HEAD + 1) + 2 * 4 * D_HEAD)
    rows = []
    x = tensors(prefix + 1, DECODE_HEADS, seed=1)
    head = {k: v[:, :prefix] for k, v in x.items()}
    token = {k: v[:, prefix:] for k, v in x.items()}
    for backend in ("cupy", "numba", "torch"):
        try:
            _, state = sympow.attention(head["q"], head["k"], head["v"], power=POWER, form="chunked",
                                        return_state=True, backend=backend)  # fmt: skip

            def step(_: Any, state: Any = state, backend: str = backend) -> Any:
                return sympow.attention(token["q"], token["k"], token["v"], power=POWER, form="recurrent",
                                        initial_state=state, return_state=True, backend=backend)  # fmt: skip

            seconds, note = measure(step, {})
        except Exception as error:
            seconds, note = math.nan, f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        achieved = moved / seconds
        rows.append({"bench": "decode", "method": f"{backend} recurrent", "T": 1, "heads": DECODE_HEADS,
                     "seconds": seconds, "bytes_per_s": achieved, "peak_bytes_per_s": peak,
                     "fraction_of_peak": achieved / peak, "note": note or f"peak from {source}"})  # fmt: skip
        print(f"decode {backend:6s} {seconds * 1e6:10.1f} us/step  {achieved / 1e9:8.1f} GB/s of "
              f"{peak / 1e9:.0f} GB/s ({source}) {note}", flush=True)  # fmt: skip
    return rows


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = ["bench", "method", "T", "heads", "seconds", "tokens_per_s", "bytes_per_s", "peak_bytes_per_s",
              "fraction_of_peak", "note"]  # fmt: skip
    with open(out / "gpu_kernels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows if r["bench"] == "prefill"):
        points = [
            (r["T"], r["seconds"] * 1e3)
            for r in rows
            if r["method"] == method and r["seconds"] == r["seconds"]
        ]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=method)
    axis.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel="ms per call",
             title=f"prefill, p = {POWER}, d = e = {D_HEAD}, {HEADS} heads, bfloat16")  # fmt: skip
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "gpu_kernels.png", dpi=120)


def print_table(rows: list[dict]) -> None:
    header = ("bench", "method", "T", "ms", "Mtok/s", "GB/s", "of peak")
    widths = (8, 24, 6, 10, 8, 8, 8)
    print(
        "\n"
        + " ".join(
            f"{h:>{w}s}" if i > 1 else f"{h:{w}s}"
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
        + "  note"
    )
    for r in rows:
        tokens = r.get("tokens_per_s", math.nan) / 1e6
        gbs = r.get("bytes_per_s", math.nan) / 1e9
        fraction = r.get("fraction_of_peak", math.nan)
        print(f"{r['bench']:8s} {r['method']:24s} {r['T']:6d} {r['seconds'] * 1e3:10.3f} {tokens:8.2f} "
              f"{gbs:8.1f} {fraction:8.1%}  {r['note']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 4096, 8192 only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    reason = gpu_missing()
    if reason is not None:
        print(f"bench_gpu_kernels: {reason}; this benchmark needs a CUDA GPU, nothing was measured.")
        return 0
    rows = run_prefill(GRID[:2] if args.quick else GRID) + run_decode()
    print_table(rows)
    write(rows, args.out)
    print(f"wrote {args.out / 'gpu_kernels.csv'} and {args.out / 'gpu_kernels.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
