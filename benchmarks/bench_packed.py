"""Packed sequences on the CPU: one call with ``cu_seqlens`` against one call per sequence.

Setting (issue 14): T = 16384 tokens holding 64 sequences of random lengths (``make_offsets``, seed 0:
cut points drawn uniformly, so lengths from a few tokens to over a thousand), torch backend, float32,
sympow p = 2 with gates (log-gates uniform in [-0.05, 0]), batch 1, for each (heads, d = e) of
``--shapes``. Both sides run with the same ``form``: "auto" (each call picks its own form by the FLOP
model; a packed call whose offsets can be read weighs the blocks its parallel form builds) and the
forced "parallel" and "chunked". The packed and the separate calls compute the same numbers
(tests/packed); the script checks that they agree before timing. With "auto" a third way is timed, what
is done without packing in one call: the sequences padded at their ends to the longest one, as a batch
(``padded_s``; causal, so the padding changes no real token's output).

Seconds are the median of ``--repeats`` calls after one warm-up; ``speedup`` is per-sequence time over
packed time, ``speedup_vs_padded`` padded time over packed time. Times are reported, never asserted.

    python benchmarks/bench_packed.py                     # writes results/packed_cpu.{csv,png}
    python benchmarks/bench_packed.py --quick             # T = 2048, 16 sequences, one repeat
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import platform
import statistics
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FORMS = ("auto", "parallel", "chunked")
SHAPES = ((4, 64), (1, 64), (4, 16), (1, 16))  # (heads, d = e)
COUNTS = ("heads", "d", "e", "T", "sequences", "longest")  # the integer columns of the CSV


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-T", type=int, default=16384, help="tokens in the packed row")
    parser.add_argument("--sequences", type=int, default=64, help="sequences packed in it")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per point (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="T = 2048, 16 sequences, one repeat")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for packed_cpu.{csv,png}")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the CSV in --out")
    args = parser.parse_args(argv)
    if args.quick:
        args.T, args.sequences, args.repeats = 2048, 16, 1
    return args


def median_seconds(call: Any, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from sympow.testing import convert, make_inputs
    from sympow.testing.packed import make_offsets

    torch.set_num_threads(args.threads)
    offsets = make_offsets(args.T, args.sequences, seed=0, empty=False)
    lengths = np.diff(offsets)
    rows = []
    for heads, width in SHAPES:
        inputs = make_inputs(batch=(1, heads), T=args.T, d=width, e=width, seed=1, gate=True, gate_min=-0.05)
        arrays = convert(inputs, torch, "float32")
        for form in FORMS:
            packed, separate, padded = calls(arrays, offsets, form, pad_to_longest(arrays, offsets, torch))

            with torch.no_grad():
                gap = float((packed() - separate()).abs().max())
                if not gap <= 1e-3:
                    raise SystemExit(
                        f"packed and separate calls differ by {gap} ({heads} heads, d={width}, {form})"
                    )
                t_packed = median_seconds(packed, args.repeats)
                t_separate = median_seconds(separate, args.repeats)
                t_padded = median_seconds(padded, args.repeats) if form == "auto" else float("nan")
            rows.append({
                "heads": heads, "d": width, "e": width, "form": form, "T": args.T,
                "sequences": args.sequences, "longest": int(lengths.max()), "packed_s": t_packed,
                "separate_s": t_separate,
                "speedup": t_separate / t_packed, "padded_s": t_padded,
                "speedup_vs_padded": t_padded / t_packed, "max_abs_difference": gap,
            })  # fmt: skip
            print(f"heads {heads} d=e={width:3d} {form:9s} packed {t_packed:8.4f} s  separate "
                  f"{t_separate:8.4f} s ({t_separate / t_packed:5.2f}x)  padded {t_padded:8.4f} s "
                  f"({t_padded / t_packed:5.2f}x)", flush=True)  # fmt: skip
    return rows


def calls(arrays: dict[str, Any], offsets: list[int], form: str, padded: tuple[Any, Any]) -> tuple[Any, ...]:
    """The three timed calls of one point: packed, one call per sequence, the padded batch."""
    import sympow
    from sympow.testing.packed import per_sequence

    (q, k, v), padded_gate = padded

    def packed() -> Any:
        return sympow.attention(arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"], form=form,
                                cu_seqlens=offsets, backend="torch")  # fmt: skip

    def separate() -> Any:
        return per_sequence(sympow.attention, arrays, offsets, form=form, backend="torch")[0]

    def batch() -> Any:
        return sympow.attention(q, k, v, log_gate=padded_gate, form=form, backend="torch")

    return packed, separate, batch


def pad_to_longest(arrays: dict[str, Any], offsets: list[int], torch: Any) -> tuple[tuple[Any, ...], Any]:
    """(q, k, v) [N, 1, heads, L, d] and log-gates [N, 1, heads, L]: each sequence zero-padded at its end to
    the longest length L."""
    lengths = [hi - lo for lo, hi in itertools.pairwise(offsets)]
    longest = max(lengths)

    def pad(x: Any, lo: int, hi: int) -> Any:
        part = x[..., lo:hi, :] if x.ndim == 4 else x[..., lo:hi]
        widths = (0, 0, 0, longest - (hi - lo)) if x.ndim == 4 else (0, longest - (hi - lo))
        return torch.nn.functional.pad(part, widths)

    def stack(x: Any) -> Any:
        return torch.stack([pad(x, lo, hi) for lo, hi in itertools.pairwise(offsets)])

    return tuple(stack(arrays[name]) for name in ("q", "k", "v")), stack(arrays["log_gate"])


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out / "packed_cpu.csv", args.out / "packed_cpu.png"
    stamp = (
        f"{datetime.date.today()} {platform.processor() or platform.machine()}, torch threads {args.threads}"
    )
    with csv_path.open("w", newline="") as handle:
        handle.write(
            f"# {stamp}; python benchmarks/bench_packed.py -T {args.T} --sequences {args.sequences}\n"
        )
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure, axis = plt.subplots(figsize=(8, 4))
    labels = [f"{r['heads']}h d{r['d']}\n{r['form']}" for r in rows]
    axis.bar(
        range(len(rows)), [r["speedup"] for r in rows], color="tab:blue", label="vs one call per sequence"
    )
    padded = [(i, r["speedup_vs_padded"]) for i, r in enumerate(rows) if r["form"] == "auto"]
    axis.scatter([i for i, _ in padded], [x for _, x in padded], color="tab:orange", zorder=3,
                 label="vs the padded batch")  # fmt: skip
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.axhline(3.0, color="tab:red", linestyle="--", linewidth=0.8, label="3x")
    axis.set_xticks(range(len(rows)), labels, fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("other time / packed time (log)")
    axis.set_title(f"{args.sequences} packed sequences, T = {args.T}, torch CPU float32, sympow p=2, gates")
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    return csv_path, png_path


def read(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV written by ``write``, numbers as numbers."""
    with path.open() as handle:
        lines = [line for line in handle if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    for row in rows:
        for key, value in row.items():
            if key in COUNTS:
                row[key] = int(float(value))
            elif key != "form":
                row[key] = float(value)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    rows = read(args.out / "packed_cpu.csv") if args.replot else measure(args)
    for path in write(rows, args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
