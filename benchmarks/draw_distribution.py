"""How often the Hypothesis strategies of ``sympow.testing.strategies`` reach the cases users run.

Draws ``--examples`` cases of ``attention_cases(max_T=..., max_d=...)`` under a derandomised Hypothesis run
(deterministic: the same numbers every time), then prints the share of each kind of case: sympow with an
even power, normalised output, each feature, and the spread of T and d. With ``--runs N`` it instead
draws N separate runs of the CI profile's example count (25) with N different seeds, which is what the
per-test seeds of tests/conftest.py give the suite as a whole.

    python benchmarks/draw_distribution.py                      # 1000 draws, max_T = 48
    python benchmarks/draw_distribution.py --runs 40            # 40 runs of 25 draws
    python benchmarks/draw_distribution.py --max-T 200 --max-d 64
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from sympow.testing.strategies import AttentionCase, attention_cases, feature_size


def draw_cases(examples: int, run_seed: int | None, **kwargs: Any) -> list[AttentionCase]:
    """``examples`` cases of ``attention_cases(**kwargs)``: derandomised when ``run_seed`` is None, else
    seeded with it (and not derandomised), as the CI profile does per test."""
    drawn: list[AttentionCase] = []
    options = dict(
        max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip

    @given(case=attention_cases(**kwargs))
    def collect(case: AttentionCase) -> None:
        drawn.append(case)

    if run_seed is None:
        settings(derandomize=True, **options)(collect)()
    else:
        seed(run_seed)(settings(derandomize=False, **options)(collect))()
    return drawn


def core(case: AttentionCase) -> bool:
    """sympow with an even power, normalised, with gates and rotary: the case users run."""
    return (
        case.kernel == "sympow"
        and case.power % 2 == 0
        and case.normalize
        and "log_gate" in case.inputs
        and "rotary" in case.inputs
    )


def shares(cases: list[AttentionCase]) -> dict[str, float]:
    """The fraction of ``cases`` of each kind reported."""
    n = len(cases)

    def share(test: Any) -> float:
        return sum(1 for case in cases if test(case)) / n

    return {
        "sympow, even p": share(lambda c: c.kernel == "sympow" and c.power % 2 == 0),
        "sympow p = 2": share(lambda c: c.kernel == "sympow" and c.power == 2),
        "sympow p = 4": share(lambda c: c.kernel == "sympow" and c.power == 4),
        "normalised": share(lambda c: c.normalize),
        "gates": share(lambda c: "log_gate" in c.inputs),
        "rotary": share(lambda c: "rotary" in c.inputs),
        "proportions": share(lambda c: "proportions" in c.inputs),
        "sympow even p, normalised, gates, rotary": share(core),
        "d = 2": share(lambda c: c.d == 2),
        "d >= 16": share(lambda c: c.d >= 16),
        "d >= 32": share(lambda c: c.d >= 32),
        "T <= 8": share(lambda c: c.T <= 8),
        "T >= 24": share(lambda c: c.T >= 24),
        "float32": share(lambda c: c.dtype == "float32"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=0, help="N runs of 25 seeded draws instead")
    parser.add_argument("--max-T", type=int, default=48)
    parser.add_argument("--max-d", type=int, default=None)
    args = parser.parse_args()
    kwargs: dict[str, Any] = {"max_T": args.max_T}
    if args.max_d is not None:
        kwargs["max_d"] = args.max_d
    if args.runs:
        cases = [case for run in range(args.runs) for case in draw_cases(25, run, **kwargs)]
        print(f"{args.runs} seeded runs of 25 draws, attention_cases({kwargs})")
    else:
        cases = draw_cases(args.examples, None, **kwargs)
        print(f"{len(cases)} derandomised draws, attention_cases({kwargs})")
    for name, value in shares(cases).items():
        print(f"  {name:44s} {100 * value:5.1f}%")
    kernels = Counter(case.kernel for case in cases)
    print("  kernels:", ", ".join(f"{k} {100 * v / len(cases):.0f}%" for k, v in kernels.most_common()))
    d_values = sorted(case.d for case in cases)
    t_values = sorted(case.T for case in cases)
    print(f"  d: median {d_values[len(cases) // 2]}, max {d_values[-1]}; "
          f"T: median {t_values[len(cases) // 2]}, max {t_values[-1]}")  # fmt: skip
    D = sorted(feature_size(c.kernel, c.d, c.power) * (2 if "proportions" in c.inputs else 1) for c in cases)
    print(f"  feature size D': median {D[len(cases) // 2]}, max {D[-1]}")
    # cost proxies: the brute force's Python double loop and the feature forms' state work
    loops = sum(math.prod(c.batch) * c.T * (c.T + 1) / 2 for c in cases) / len(cases)
    state = sum(
        math.prod(c.batch) * c.T * feature_size(c.kernel, c.d, c.power) * (c.e + 1)
        * (2 if "proportions" in c.inputs else 1)
        for c in cases
    ) / len(cases)  # fmt: skip
    print(
        f"  mean brute-force pairs batch T (T + 1) / 2: {loops:.0f}; "
        f"mean state work batch T D' (e + 1): {state:.3g}"
    )


if __name__ == "__main__":
    main()
