"""The sequence-parallel cost model on paper: bytes and seconds per member of each exchange, and the pick.

For P = 2, 4, 8, ..., 1024 members and sympow p = 2 and 4 (d = e = 64, one batch entry and one head, a
float32 state, return_state=True), from ``sympow.spec.sequence`` (math.md 11, docs/sequence.md):

- bytes a member receives: ``model_bytes`` = (P - 1) n b for "allgather", (ceil(log2 P) + 2) n b for
  "scan" (its steps, the exclusive shift and the broadcast of the final state), n = D'(e + 1) + 2 numbers
  of b = 4 bytes, D' = C(d + p - 1, p);
- seconds: ``model_seconds`` = LATENCY + (P - 1) n b / BANDWIDTH for "allgather", (ceil(log2 P) + 2)
  (LATENCY + n b / BANDWIDTH) for "scan";
- auto: what ``choose_exchange`` picks ("allgather" when its seconds are <= the scan's).

Pure arithmetic, nothing is run. The exit status is 1 if ``choose_exchange`` disagrees with that rule.

    python benchmarks/sequence_cost_model.py                # prints, writes results/sequence_cost_model.csv
    python benchmarks/sequence_cost_model.py --markdown     # the table as Markdown (docs/sequence.md)
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from types import SimpleNamespace

from sympow.spec import sequence

D_HEAD, ITEMSIZE, BATCH = 64, 4, 1
POWERS = (2, 4)
MEMBERS = tuple(2**i for i in range(1, 11))
EXCHANGES = ("allgather", "scan")


def rows() -> list[dict]:
    """One row per (p, P)."""
    out = []
    for p in POWERS:
        features = math.comb(D_HEAD + p - 1, p)
        element = sequence.element_bytes(BATCH, features, D_HEAD, ITEMSIZE)
        # what choose_exchange reads of a request (one batch entry, float32 state, the final state asked for)
        request = SimpleNamespace(
            batch_shape=(BATCH,), feature_size=features, e=D_HEAD, state_dtype="float32", return_state=True
        )
        for P in MEMBERS:
            size = {x: sequence.model_bytes(P, x, BATCH, features, D_HEAD, ITEMSIZE, True) for x in EXCHANGES}
            seconds = {x: sequence.model_seconds(P, x, element, True) for x in EXCHANGES}
            rule = "allgather" if seconds["allgather"] <= seconds["scan"] else "scan"
            out.append({
                "p": p, "feature_size": features, "element_bytes": element, "P": P,
                "allgather_bytes": size["allgather"], "scan_bytes": size["scan"],
                "allgather_seconds": seconds["allgather"], "scan_seconds": seconds["scan"],
                "auto": sequence.choose_exchange(request, P), "rule": rule,
            })  # fmt: skip
    return out


def megabytes(n: int) -> str:
    return f"{n / 1e6:.3f}"


def milliseconds(s: float) -> str:
    return f"{1e3 * s:.3f}"


def table(out: list[dict], markdown: bool) -> str:
    header = ["p", "D'", "P", "allgather MB", "scan MB", "allgather ms", "scan ms", "auto"]
    lines = []
    for r in out:
        lines.append([
            str(r["p"]), str(r["feature_size"]), str(r["P"]), megabytes(r["allgather_bytes"]),
            megabytes(r["scan_bytes"]), milliseconds(r["allgather_seconds"]),
            milliseconds(r["scan_seconds"]), r["auto"],
        ])  # fmt: skip
    if markdown:
        return "\n".join(
            "| " + " | ".join(cells) + " |"
            for cells in [header, ["---:"] * (len(header) - 1) + [":--"], *lines]
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *lines]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    out = rows()
    print(
        f"LATENCY = {sequence.LATENCY * 1e6:g} us per collective, BANDWIDTH = "
        f"{sequence.BANDWIDTH / 1e9:g} GB/s per member; d = e = {D_HEAD}, {BATCH} batch entry, float32 "
        "state, return_state=True; MB = 1e6 bytes received per member"
    )
    print(table(out, args.markdown))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sequence_cost_model.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    print(f"wrote {args.out / 'sequence_cost_model.csv'}")
    wrong = [r for r in out if r["auto"] != r["rule"]]
    if wrong:
        print(f"choose_exchange disagrees with the model_seconds rule at {wrong}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
