"""Calibrate gamma of the per-row tolerance tau + gamma u c_i (math.md 9) on the float32 state path.

For each setting (kernel, d, T, form, inputs random or nearly orthogonal to every key, gates on or off),
the float32 inputs run through ``sympow.attention`` with the float32 state path and are compared, row by
row, with the float64 reference (parallel form, NumPy). The table reports, over the rows where the
condition term matters (u c_i > tau / 10), the largest ratio

    (err_i - tau) (1 - u c_i) / (u c_i),   err_i = max |y_i - y_ref_i| / max |v|,

which is the gamma those rows need (over the rows with u c_i < 1, where the error has a first-order
bound: the law is tau + gamma u c_i / (1 - u c_i), and rows with u c_i >= 1 are not determined by a
float32 state path at all; their count is reported); D' and T are printed so that a law gamma(D', T)
can be read off.
Timings are not measured. The law chosen from it is written in docs/math.md (section "precision").

    python benchmarks/calibrate_state_path.py             # the full grid (a few minutes)
    python benchmarks/calibrate_state_path.py --quick
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from pathlib import Path

import numpy as np

import sympow
from sympow.testing import condition_numbers, make_inputs, relative_errors_by_row, tolerance
from sympow.testing.strategies import nearly_orthogonal_inputs

U32 = 2.0**-24


def one(kernel: str, power: int, d: int, T: int, form: str, inputs: dict, backend: str, library) -> dict:
    rounded = {k: v.astype(np.float32).astype(np.float64) for k, v in inputs.items() if k in ("q", "k", "v")}
    gate = inputs.get("log_gate")
    if gate is not None:
        gate = gate.astype(np.float32).astype(np.float64)
    options = dict(kernel=kernel, power=power, log_gate=gate)
    y_ref = sympow.attention(rounded["q"], rounded["k"], rounded["v"], form="parallel", backend="reference",
                             **options)  # fmt: skip
    c = condition_numbers(rounded["q"], rounded["k"], rounded["v"], **options)
    arrays = [library.asarray(rounded[k].astype(np.float32)) for k in ("q", "k", "v")]
    g = None if gate is None else library.asarray(gate.astype(np.float32))
    y = sympow.attention(*arrays, kernel=kernel, power=power, log_gate=g, form=form, chunk_size=64,
                         backend=backend, state_dtype="float32")  # fmt: skip
    err = relative_errors_by_row(y, y_ref, rounded["v"], normalize=True)
    tau = tolerance("float32")
    uc = U32 * c
    matters = (uc > tau / 10) & (uc < 1)  # the condition term counts, and a first-order bound exists
    need = (err - tau) * (1 - uc) / np.maximum(uc, 1e-300)  # the gamma of tau + gamma u c / (1 - u c)
    return {
        "rows": int(matters.sum()),
        "undetermined_rows": int((uc >= 1).sum()),
        "max_c": float(c.max()),
        "gamma_needed": float(need[matters].max()) if matters.any() else float("nan"),
        "max_err": float(err[uc < 1].max()) if (uc < 1).any() else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--inputs", default="random,orthogonal", help="input kinds to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    dims = [8, 16] if args.quick else [4, 8, 16, 32, 64]
    lengths = [64, 256] if args.quick else [64, 512, 2048]
    kernels = [("sympow", 2), ("sympow", 4), ("taylor", 2), ("taylor", 4)]
    rows = []
    for (kernel, power), d, T, form, kind, gate in itertools.product(
        kernels, dims, lengths, ["chunked", "recurrent"], args.inputs.split(","), [False, True]
    ):
        if (form == "recurrent" and T > 512) or (power == 4 and d > 32):
            continue
        D = sum(math.comb(d + n - 1, n) for n in ((power,) if kernel == "sympow" else range(power + 1)))
        if kind == "random":
            inputs = make_inputs(batch=(2,), T=T, d=d, e=4, seed=d * T + power, gate=gate)
        else:
            inputs = nearly_orthogonal_inputs(batch=(2,), T=T, d=d, e=4, p=power, r=4, key_rank=1,
                                              seed=d * T + power, gate=gate)  # fmt: skip
        for backend, library in (("reference", np), ("torch", torch)):
            result = one(kernel, power, d, T, form, inputs, backend, library)
            row = dict(kernel=f"{kernel}{power}", d=d, D=D, T=T, form=form, inputs=kind, gate=gate,
                       backend=backend, **result)  # fmt: skip
            rows.append(row)
            print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("state_path_gamma_quick.csv" if args.quick else "state_path_gamma.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    needed = [r["gamma_needed"] for r in rows if r["rows"]]
    print(f"largest gamma needed: {max(needed):.3g} over {len(needed)} settings; wrote {path}")


if __name__ == "__main__":
    main()
