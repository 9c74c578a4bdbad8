"""CPU benchmark of sympow's torch backend against two peers' pure-PyTorch reference implementations.

What it measures: the forward time (no autograd) of ``sympow.attention(..., backend="torch")`` (public API
only; form "auto" and, explicitly, "chunked", default chunk size) next to the peers' reference functions
on the same inputs, and the largest difference of the outputs relative to max |v|:

- power-attention 1.4.4, ``power_attention/_attention/reference.py``: ``attention(Q, K, V, log_G, deg,
  scale=..., norm=True)``, the quadratic symmetric power attention with per-token gating (gates on);
- fla-core 0.6.0 (flash-linear-attention), ``fla/ops/based/naive.py``: ``naive_parallel_based``
  (1 + s + s^2/2) and ``fla/ops/rebased/naive.py``: ``naive_parallel_rebased`` (s^2), s = d^-1/2 q.k,
  no gates (our rows for them run without gates too).

The peers' code is never vendored: the script runs ``pip download --no-deps power-attention==1.4.4
fla-core==0.6.0`` into ``--cache`` (default ~/.cache/sympow-peers; skipped when the wheels are already
there), extracts only the reference files (and the pure-Python helper module they import) from the
wheels into that cache, and imports them by file path; no triton or CUDA code is imported. Nothing is
written under the repository except the results.

Setting (math.md section 8 for the peers' conventions): p = 2, d = e = 64, 4 heads, batch 1, float32,
T = 8192 (``--T``, a comma-separated list; ``--quick``: T = 1024). The outputs are compared first, and the
script exits non-zero when any pair differs by more than ``--tolerance`` (1e-3) relative to max |v|; only
then each implementation is timed: one warm-up call (the comparison call), then the median of ``--repeats``
calls (time.perf_counter). Speed-up targets of the issue (ours over power-attention >= 10x, over fla's naive
based and rebased >= 5x) are printed, never asserted.

Mind the machine's load: our chunked form is a loop of many small tensor operations, and when other
processes compete for the cores, torch's intra-op threads wait on each other at every operation. Measured
once here (2 cores, T = 8192, gated, the torch backend of 2026-12-01): 0.56 s on a quiet machine, 30 s at a
load average of 5 with 2 threads, 0.4 s at the same load with ``--threads 1``; the peers' few large T x T
operations slow down only in proportion.
The table therefore carries the load average of each row, and the script warns when the machine is busy.

Writes a table to stdout, ``peers_cpu.csv`` and ``peers_cpu.png`` (``--name``; ``peers_cpu_quick`` with
``--quick``) into ``--out`` (default benchmarks/results/).

    python benchmarks/bench_peers.py             # T = 8192, about 1.5 minutes on a quiet 2-core machine
    python benchmarks/bench_peers.py --quick     # T = 1024, a smoke run of about 20 seconds
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sympow
from sympow.testing import convert, make_inputs

HEADS, D_HEAD, POWER, BATCH = 4, 64, 2, 1
DEFAULT_GRID = (8192,)
QUICK_GRID = (1024,)
SCALE = D_HEAD**-0.5

# (distribution, version, file-name prefix of the wheel)
WHEELS = {
    "power-attention": ("1.4.4", "power_attention-1.4.4-"),
    "fla-core": ("0.6.0", "fla_core-0.6.0-"),
}
OURS = "sympow torch"
FLA_EPS = 1e-6  # fla's naive_parallel_*: o / (z + 1e-6), z the true (unshifted) denominator


class PeerUnavailable(RuntimeError):
    """A peer's reference could not be downloaded, extracted or imported on the CPU."""


# ---------------------------------------------------------------------------------------------------------
# Loading the peers from their wheels
# ---------------------------------------------------------------------------------------------------------


def wheel_path(cache: Path, distribution: str) -> Path | None:
    prefix = WHEELS[distribution][1]
    found = sorted(cache.glob(f"{prefix}*.whl"))
    return found[0] if found else None


def download_wheels(cache: Path) -> dict[str, Path]:
    """The two wheels in ``cache``, downloaded with pip (no dependencies) where missing."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [name for name in WHEELS if wheel_path(cache, name) is None]
    if missing:
        specs = [f"{name}=={WHEELS[name][0]}" for name in missing]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += [*specs, "-d", str(cache)]
        print("downloading the peers' wheels:", " ".join(command[3:]), flush=True)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    wheels = {}
    for name in WHEELS:
        path = wheel_path(cache, name)
        if path is not None:
            wheels[name] = path
    return wheels


def extract(wheel: Path, members: list[str], cache: Path) -> dict[str, Path]:
    """Extract only ``members`` of ``wheel`` into cache/extracted/<wheel name>/; their paths by member."""
    target = cache / "extracted" / wheel.stem
    paths = {}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member in members:
            if member not in names:
                raise PeerUnavailable(f"{wheel.name} has no {member}")
            path = target / member
            if not path.exists():
                archive.extract(member, target)
            paths[member] = path
    return paths


def load_file(name: str, path: Path, stand_ins: dict[str, types.ModuleType]) -> types.ModuleType:
    """Import ``path`` as module ``name``, with ``stand_ins`` in sys.modules only while it executes."""
    saved = {key: sys.modules.get(key) for key in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PeerUnavailable(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except PeerUnavailable:
        raise
    except Exception as error:  # any import failure of their code is reported, not hidden
        raise PeerUnavailable(f"importing {path} failed: {type(error).__name__}: {error}") from error
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return module


def package_stub(name: str) -> types.ModuleType:
    """An empty package: lets ``from pkg.sub import x`` resolve a submodule we put in sys.modules without
    running the real package's __init__ (which imports triton)."""
    module = types.ModuleType(name)
    module.__path__ = []
    return module


def einops_stand_in() -> dict[str, types.ModuleType]:
    """fla/ops/based/naive.py imports einops at the top, only for naive_chunk_based (not used here). The
    real einops where installed; otherwise a stand-in whose rearrange refuses to run."""
    if importlib.util.find_spec("einops") is not None:
        return {}
    module = types.ModuleType("einops")

    def rearrange(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("einops stand-in of bench_peers.py: only naive_parallel_* may run")

    module.rearrange = rearrange  # type: ignore[attr-defined]
    return {"einops": module}


def load_power_attention(wheel: Path, cache: Path) -> Callable[..., Any]:
    """power_attention/_attention/reference.py's ``attention``. It imports ``dummify`` from
    power_attention/_utils.py (pure Python: torch, math, functools), which is extracted and loaded too,
    under an empty ``power_attention`` package stub."""
    reference, utils = "power_attention/_attention/reference.py", "power_attention/_utils.py"
    paths = extract(wheel, [reference, utils], cache)
    stub = package_stub("power_attention")
    utils_module = load_file("power_attention._utils", paths[utils], {"power_attention": stub})
    stand_ins = {"power_attention": stub, "power_attention._utils": utils_module}
    module = load_file("_sympow_peer_power_attention_reference", paths[reference], stand_ins)
    return module.attention


def load_fla(wheel: Path, cache: Path) -> dict[str, Callable[..., Any]]:
    based, rebased = "fla/ops/based/naive.py", "fla/ops/rebased/naive.py"
    paths = extract(wheel, [based, rebased], cache)
    based_module = load_file("_sympow_peer_fla_based_naive", paths[based], einops_stand_in())
    rebased_module = load_file("_sympow_peer_fla_rebased_naive", paths[rebased], {})
    return {
        "based": based_module.naive_parallel_based,
        "rebased": rebased_module.naive_parallel_rebased,
    }


# ---------------------------------------------------------------------------------------------------------
# The comparisons: one peer function and our call with the options that reproduce it
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Group:
    """One peer and the options of ``sympow.attention`` that compute the same function."""

    name: str  # short name of the comparison
    peer_name: str  # short name of the peer's function, for the table
    peer_label: str  # file and function of the peer
    gated: bool
    target: float  # the speed-up target (printed, not asserted)
    options: dict[str, Any]  # our options besides q, k, v, log_gate, form
    peer: Callable[[dict[str, Any]], Any] | None = None  # (torch inputs in our layout) -> y [b, h, T, e]
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # our layout -> the peer's inputs
    error: str | None = None  # why the peer is unavailable
    results: list[dict[str, Any]] = field(default_factory=list)


def power_attention_group(attention: Callable[..., Any] | None, error: str | None) -> Group:
    """power-attention's ``attention`` reference, layout [b, t, h, d], gates [b, t, h].

    Conventions, mapped exactly: its score is (scale q.k)^deg with deg even, so our kernel "sympow", p = deg,
    scale = sigma = d^-1/2 (power_full's default; the reference itself defaults to 1.0, so it is passed).
    Its log_G is the *accumulated* log-gate (power_full passes ``log_G.cumsum(1)``) and it adds
    log_G[i] - log_G[j] to the log-score, so the weight is exp(sum_{l=j+1..i} g_l): our w_ij with our
    per-token log_gate g. The cumsum is done inside the timed call, as power_full does. norm=True returns
    o / l, the normalised output; it computes in log space, p = exp(deg log(|s| + 1e-7) + G_i - G_j - rowmax)
    and l = sum_j p + 1e-6. Neither guard has an exact counterpart in ours (eps = 0 here):
    - 1e-7 inside the log changes s^2 by about 2e-7 |s|, relatively about 2e-7 of the row's sum;
    - 1e-6 after the row-max shift is eps = 1e-6 exp(rowmax_i), a row-dependent guard: l >= 1 after the
      shift, so it changes y_i by at most 1e-6 relative;
    - the gate as the difference of two float32 prefix sums (math.md section 7): at T = 8192 with gates
      down to -1 these sums reach about -4e3, whose float32 spacing is 5e-4, so each weight carries an error
      of up to about 5e-4 relative; averaged over a row's keys this gives the 6e-5 (relative to max |v|)
      measured at T = 8192 (2e-5 at T = 2048, 7e-6 at T = 1024). That is the largest term, and it is
      theirs: measured at T = 2048 in float64 against our float64 result, their function differs by 2.2e-5
      when given the float32 cumsum and by 5.9e-7 (the two guards above) when given a float64 one; our
      float32 result differs from our float64 one by 5e-7 (segment sums, math.md section 7).
    All are far below the 1e-3 tolerance."""
    group = Group(
        name="power-attention (gated)",
        peer_name="power-attention attention",
        peer_label="power_attention/_attention/reference.py: attention(deg=2, scale=d^-1/2, norm=True)",
        gated=True,
        target=10.0,
        options={"kernel": "sympow", "power": POWER, "scale": SCALE, "eps": 0.0},
        error=error,
    )
    if attention is not None:
        import torch

        def prepare(t: dict[str, Any]) -> dict[str, Any]:
            # [b, h, T, d] -> [b, T, h, d], contiguous (the reference uses .view); gates -> [b, T, h]
            q, k, v = (t[n].transpose(1, 2).contiguous() for n in ("q", "k", "v"))
            return {"q": q, "k": k, "v": v, "g": t["log_gate"].transpose(1, 2).contiguous()}

        def peer(x: dict[str, Any]) -> Any:
            log_G = x["g"].to(torch.float32).cumsum(1)
            y = attention(x["q"], x["k"], x["v"], log_G, POWER, scale=SCALE, norm=True)
            return y.transpose(1, 2)  # [b, T, h, e] -> our [b, h, T, e]

        group.peer, group.prepare = peer, prepare
    return group


def fla_groups(functions: dict[str, Callable[..., Any]] | None, error: str | None) -> list[Group]:
    """fla's naive_parallel_based and naive_parallel_rebased, layout [b, h, t, d] (ours), no gates.

    Both scale q by ``scale`` (default d^-1/2, passed explicitly), form s = q.k, then 1 + s + s^2/2 (based)
    or s^2 (rebased), mask the upper triangle to 0 and return o / (z + 1e-6) with z the plain row sum
    (use_norm=True, the default): exactly our kernel "taylor" p = 2 (based) and "sympow" p = 2 (rebased)
    with scale = d^-1/2 and eps = 1e-6 (math.md section 4: eps added to the true denominator). The only
    differences are float32 rounding (theirs quadratic, ours the chunked state path: math.md section 9)."""
    groups = [
        Group(
            name="fla naive based",
            peer_name="fla naive_parallel_based",
            peer_label="fla/ops/based/naive.py: naive_parallel_based(scale=d^-1/2, use_norm=True)",
            gated=False,
            target=5.0,
            options={"kernel": "taylor", "power": 2, "scale": SCALE, "eps": FLA_EPS},
            error=error,
        ),
        Group(
            name="fla naive rebased",
            peer_name="fla naive_parallel_rebased",
            peer_label="fla/ops/rebased/naive.py: naive_parallel_rebased(scale=d^-1/2, use_norm=True)",
            gated=False,
            target=5.0,
            options={"kernel": "sympow", "power": 2, "scale": SCALE, "eps": FLA_EPS},
            error=error,
        ),
    ]
    if functions is not None:
        for group, key in zip(groups, ("based", "rebased"), strict=True):
            function = functions[key]

            def peer(x: dict[str, Any], function: Callable[..., Any] = function) -> Any:
                return function(x["q"], x["k"], x["v"], scale=SCALE, use_norm=True)

            group.peer = peer
            group.prepare = lambda t: {n: t[n] for n in ("q", "k", "v")}
    return groups


def load_groups(cache: Path) -> list[Group]:
    try:
        wheels = download_wheels(cache)
    except OSError as exc:
        wheels, download_error = {}, f"pip download failed: {exc}"
    else:
        download_error = "pip download did not produce the wheel (no network? see the messages above)"
    attention = functions = None
    pa_error = fla_error = None
    if "power-attention" in wheels:
        try:
            attention = load_power_attention(wheels["power-attention"], cache)
        except PeerUnavailable as exc:
            pa_error = str(exc)
    else:
        pa_error = download_error
    if "fla-core" in wheels:
        try:
            functions = load_fla(wheels["fla-core"], cache)
        except PeerUnavailable as exc:
            fla_error = str(exc)
    else:
        fla_error = download_error
    return [power_attention_group(attention, pa_error), *fla_groups(functions, fla_error)]


# ---------------------------------------------------------------------------------------------------------
# Timing and comparing
# ---------------------------------------------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average (other processes competing for the cores), or NaN where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def timings(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, fastest) seconds of ``repeats`` calls (the caller has made the warm-up call)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def ours(t: dict[str, Any], group: Group, form: str) -> Callable[[], Any]:
    log_gate = t["log_gate"] if group.gated else None

    def call() -> Any:
        return sympow.attention(
            t["q"], t["k"], t["v"], log_gate=log_gate, form=form, backend="torch", **group.options
        )

    return call


def relative_error(y: Any, reference: Any, v: Any) -> float:
    return float((y.double() - reference.double()).abs().max() / v.double().abs().max())


def run_T(T: int, groups: list[Group], forms: list[str], args: argparse.Namespace) -> bool:
    """Compare, then time, every available group at one T; False when a comparison fails."""
    import torch

    inputs = make_inputs(
        batch=(BATCH, HEADS), T=T, d=D_HEAD, e=D_HEAD, seed=args.seed, gate=True, gate_min=args.gate_min,
        dtype="float32",
    )  # fmt: skip
    t = convert(inputs, torch, "float32")
    ok = True
    timed: list[tuple[Group, dict[str, Any], Callable[[], Any]]] = []
    with torch.no_grad():
        # 1. compare, before any timing; each call here is also that implementation's warm-up call
        for group in groups:
            if group.peer is None or group.prepare is None:
                continue
            x = group.prepare(t)

            def peer_call(function: Callable[[dict[str, Any]], Any] = group.peer, x: dict = x) -> Any:
                return function(x)

            reference = peer_call()
            peer_row = {
                "T": T,
                "group": group.name,
                "impl": group.peer_name,
                "form": "-",
                "max_rel_err": None,
            }
            timed.append((group, peer_row, peer_call))
            for form in forms:
                call = ours(t, group, form)
                error = relative_error(call(), reference, t["v"])
                row = {"T": T, "group": group.name, "impl": OURS, "form": form, "max_rel_err": error}
                timed.append((group, row, call))
                status = "ok" if error <= args.tolerance else "DISAGREES"
                print(f"  T={T} {group.name:<24} ours form={form:<8} max|diff|/max|v| = {error:.2e} {status}",
                      flush=True)  # fmt: skip
                ok &= error <= args.tolerance
            del reference
        if not ok:
            return False
        # 2. time
        peer_seconds: dict[str, tuple[float, float]] = {}
        for group, row, call in timed:
            seconds, best = timings(call, args.repeats)
            row |= {"seconds": seconds, "best": best, "load": load_average()}
            if row["impl"] == OURS:
                peer_median, peer_best = peer_seconds[group.name]
                row |= {"speedup": peer_median / seconds, "speedup_best": peer_best / best}
            else:
                peer_seconds[group.name] = (seconds, best)
                row |= {"speedup": None, "speedup_best": None}
            row["target"] = group.target
            row["repeats"] = args.repeats
            group.results.append(row)
            print(f"  T={T} {group.name:<24} {row['impl']:<28} {row['form']:<8} {seconds:9.3f} s "
                  f"(fastest {best:.3f} s, load {row['load']:.1f})", flush=True)  # fmt: skip
    return True


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------


def print_table(groups: list[Group]) -> None:
    header = (f"{'comparison':<24} {'implementation':<30} {'T':>6} {'seconds':>9} {'fastest':>9} "
              f"{'load':>5} {'speed-up':>9} {'(fastest)':>9} {'target':>7} {'max err':>9}")  # fmt: skip
    print()
    print(header)
    print("-" * len(header))
    for group in groups:
        if group.error:
            print(f"{group.name:<24} UNAVAILABLE: {group.error}")
            continue
        for row in group.results:
            impl, speedup, speedup_best, target, error, met = row["impl"], "-", "-", "-", "-", ""
            if row["impl"] == OURS:
                impl = f"{OURS} form={row['form']}"
                speedup, target = f"{row['speedup']:8.2f}x", f">={row['target']:.0f}x"
                speedup_best = f"{row['speedup_best']:8.2f}x"
                error = f"{row['max_rel_err']:9.2e}"
                met = "  met" if row["speedup"] >= row["target"] else "  not met"
            times = f"{row['seconds']:9.3f} {row['best']:9.3f} {row['load']:5.1f}"
            print(f"{group.name:<24} {impl:<30} {row['T']:>6} {times} {speedup:>9} {speedup_best:>9} "
                  f"{target:>7} {error:>9}{met}")  # fmt: skip
    print(
        "seconds: median of the repeats, fastest: their minimum; load: the 1-minute load average after the "
        "repeats,\nwhich counts this run's own threads; speed-up: peer's median / our median (fastest: the "
        "same of the minima; 'met' judges the medians);\nmax err: max |ours - peer| / max |v| (float32)"
    )


def bar_label(row: dict[str, Any]) -> str:
    return f"ours, form={row['form']}" if row["impl"] == OURS else row["impl"]


def plot(groups: list[Group], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g.results]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4.5), squeeze=False)
    for ax, group in zip(axes[0], shown, strict=True):
        grid = sorted({r["T"] for r in group.results})
        labels = list(dict.fromkeys(bar_label(r) for r in group.results))
        width = 0.8 / len(labels)
        for n, label in enumerate(labels):
            rows = [r for r in group.results if bar_label(r) == label]
            xs = [grid.index(r["T"]) + (n - (len(labels) - 1) / 2) * width for r in rows]
            bars = ax.bar(xs, [r["seconds"] for r in rows], width, label=label, color=f"C{n}")
            for bar, r in zip(bars, rows, strict=True):
                if r["speedup"] is not None:
                    ax.annotate(f"{r['speedup']:.2g}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(grid)), [f"T={T}" for T in grid])
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(r["seconds"] for r in group.results) / 4)  # bars start well below the lowest
        ax.set_title(f"{group.name}: target ours >= {group.target:.0f}x faster", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("seconds (forward, median of repeats)")
    fig.suptitle(f"sympow torch vs peers' references, CPU, p={POWER}, d=e={D_HEAD}, {HEADS} heads, float32",
                 fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(groups: list[Group], path: Path) -> None:
    fields = ["T", "group", "impl", "form", "seconds", "best", "speedup", "speedup_best", "target"]
    fields += ["max_rel_err", "repeats", "load"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for group in groups:
            writer.writerows(group.results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--T", type=str, default="", help="comma-separated T values (default 8192)")
    parser.add_argument("--quick", action="store_true", help="T = 1024 only, a smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--forms", type=str, default="auto,chunked", help="our forms to run")
    parser.add_argument("--gate-min", type=float, default=-1.0, help="log-gates uniform in [gate-min, 0]")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max |ours - peer| / max |v|")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sympow-peers")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", type=str, default=None, help="CSV/PNG name (peers_cpu, or peers_cpu_quick)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    grid = [int(T) for T in args.T.split(",") if T] or list(QUICK_GRID if args.quick else DEFAULT_GRID)
    forms = [f for f in args.forms.split(",") if f]
    name = args.name or ("peers_cpu_quick" if args.quick else "peers_cpu")
    groups = load_groups(args.cache)
    cores = os.cpu_count() or 1
    if load_average() > cores - 0.5:
        print(f"WARNING: load average {load_average():.1f} on {cores} cores: other processes compete for "
              f"the CPU, and our many small operations on {args.threads} threads then slow down far more "
              "than the peers' large ones (see the docstring); the timings below are distorted",
              flush=True)  # fmt: skip
    for group in groups:
        state = f"UNAVAILABLE: {group.error}" if group.error else group.peer_label
        print(f"{group.name:<24} {state}")
    print(f"CPU, {os.cpu_count()} cores, torch {torch.__version__} threads {torch.get_num_threads()}; "
          f"p={POWER}, d=e={D_HEAD}, {HEADS} heads, batch {BATCH}, float32, gates in [{args.gate_min}, 0] "
          f"for power-attention; median of {args.repeats} after a warm-up; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)  # fmt: skip
    for T in grid:
        if not run_T(T, groups, forms, args):
            print(f"FAILED: at T={T} ours and a peer disagree beyond {args.tolerance:g} relative to max |v| "
                  "(more than their eps conventions explain); nothing timed", file=sys.stderr)  # fmt: skip
            return 1
    print_table(groups)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(groups, args.out / f"{name}.csv")
    plot(groups, args.out / f"{name}.png")
    print(f"wrote {args.out / (name + '.csv')} and {args.out / (name + '.png')}")
    unavailable = [g.name for g in groups if g.error]
    if unavailable:
        print(f"not measured (could not load): {', '.join(unavailable)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
