"""Sequence parallelism on CPU: forward time per member and bytes exchanged, against the cost model.

Setting: kernel sympow p = 2, d = e = 64, 4 heads (batch shape (4,)), float32, T = 16384 split evenly over
the P = 1, 2, 4 members of a sequence group, form="chunked" (chunk 64), return_state=True, no gates
(docs/sequence.md; docs/math.md, "Sequence parallelism"). Two engines, each with both exchanges
("allgather", "scan"), and at P = 1 a baseline row "none": the same call on the whole T with no group.

- jax: P simulated host devices (XLA_FLAGS=--xla_force_host_platform_device_count=P, so one fresh process
  per P), ``jax.shard_map`` over a mesh axis "seq", jitted. The time is that of the whole call, during
  which all P simulated devices run on this machine's cores.
- torch: P processes spawned with a gloo process group (file:// rendezvous in a temporary directory,
  each with cores // P threads). The time is the slowest member's median.

Seconds are the median of ``--repeats`` forward calls after one warm-up (the compiling call for JAX). The
bytes are those a member receives, summed from ``sympow.spec.sequence.traffic()`` (under jax.jit they are
recorded when the call is traced), and are compared with ``sympow.spec.sequence.model_bytes``; the exit
status is 1 where any differs. Times are reported, never checked: the P members share the same few cores,
so a member's time shows the cost of the exchange and of the split, not a speed-up.

    python benchmarks/bench_sequence.py                    # writes results/sequence_cpu.{csv,png}
    python benchmarks/bench_sequence.py --quick            # T = 2048, one repeat
    python benchmarks/bench_sequence.py --engines torch --out /tmp/results
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HEADS, D_HEAD, POWER, ITEMSIZE = 4, 64, 2, 4
MEMBERS = (1, 2, 4)
EXCHANGES = ("allgather", "scan")
NONE = "none"  # the baseline row of P = 1: no sequence_group at all
TIMEOUT = 300  # seconds: the torch process group's timeout, and the limit on joining its processes


def feature_size(d: int = D_HEAD, p: int = POWER) -> int:
    """D' = C(d + p - 1, p): the sympow feature size."""
    return math.comb(d + p - 1, p)


def model(P: int, exchange: str, traced: bool) -> int:
    """The cost model's bytes received per member for this benchmark's request (``traced``: under
    jax.jit, where the flags of forbidden values are exchanged too)."""
    from sympow.spec.sequence import model_bytes

    return model_bytes(P, exchange, HEADS, feature_size(), D_HEAD, ITEMSIZE, return_state=True, traced=traced)


def options(chunk: int) -> dict[str, Any]:
    return dict(power=POWER, form="chunked", chunk_size=chunk, return_state=True)


def inputs(T: int) -> dict[str, Any]:
    """The whole sequence's q, k, v (NumPy, float32), the same on every member and engine."""
    from sympow.testing.inputs import make_inputs

    return make_inputs(batch=(HEADS,), T=T, d=D_HEAD, e=D_HEAD, seed=0, dtype="float32")


def timed(step: Any, repeats: int, before: Any = None) -> tuple[float, int]:
    """(median seconds of ``repeats`` calls of ``step`` after one warm-up, bytes received in the warm-up).
    ``before`` runs ahead of each timed call, untimed (a barrier)."""
    from sympow.spec.sequence import traffic

    with traffic() as record:  # the warm-up (under jax.jit: the call that traces and compiles)
        step()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(nbytes for _, nbytes in record)


# --- JAX: one fresh process per P ----------------------------------------------------------------------


def jax_rows(P: int, T: int, chunk: int, repeats: int) -> list[dict]:
    """Rows of the JAX engine with P simulated devices; run in a fresh process (XLA_FLAGS first)."""
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={P}"
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    import sympow

    mesh = jax.make_mesh((P,), ("seq",))
    spec_t = PartitionSpec(None, "seq", None)
    whole = [jnp.asarray(x) for x in inputs(T).values()]
    sharded = [jax.device_put(x, NamedSharding(mesh, spec_t)) for x in whole]
    calls = {}
    if P == 1:  # the baseline: one call on the whole sequence, no group (on unsharded arrays: under jit,
        # arrays sharded along T on make_mesh's Explicit axes are refused by JAX outside shard_map)
        calls[NONE] = jax.jit(lambda q, k, v: sympow.attention(q, k, v, **options(chunk)))
    for exchange in EXCHANGES:

        def body(q: Any, k: Any, v: Any, exchange: str = exchange) -> Any:
            return sympow.attention(
                q, k, v, sequence_group="seq", sequence_exchange=exchange, **options(chunk)
            )

        calls[exchange] = jax.jit(
            jax.shard_map(
                body, mesh=mesh, in_specs=(spec_t,) * 3, out_specs=(spec_t, PartitionSpec()), check_vma=False
            )
        )
    rows = []
    for exchange, call in calls.items():
        arrays = whole if exchange == NONE else sharded
        seconds, received = timed(
            lambda call=call, arrays=arrays: jax.block_until_ready(call(*arrays)), repeats
        )
        rows.append(row("jax", P, exchange, T, chunk, seconds, [received]))
    return rows


# --- torch: P processes with a gloo group --------------------------------------------------------------


def torch_member(rank: int, P: int, folder: str, T: int, chunk: int, repeats: int, cores: int) -> None:
    """One member of the gloo group: writes {exchange: (median seconds, bytes received)} to a JSON file
    (with P = 1 also the baseline, no group)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, cores // P))
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=P,
        timeout=datetime.timedelta(seconds=TIMEOUT),
    )  # fmt: skip
    import sympow

    lo, hi = rank * T // P, (rank + 1) * T // P
    q, k, v = (torch.from_numpy(x[:, lo:hi].copy()) for x in inputs(T).values())
    groups = {NONE: None} if P == 1 else {}  # the baseline: one call on the whole sequence, no group
    results = {}
    for exchange in [*groups, *EXCHANGES]:
        group = groups.get(exchange, dist.group.WORLD)

        def step(exchange: str = exchange, group: Any = group) -> None:
            sympow.attention(
                q, k, v, sequence_group=group, sequence_exchange="auto" if group is None else exchange,
                backend="torch", **options(chunk),
            )  # fmt: skip

        results[exchange] = timed(step, repeats, before=dist.barrier)
    Path(folder, f"member{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def torch_rows(P: int, T: int, chunk: int, repeats: int) -> list[dict]:
    """Rows of the torch engine: P spawned members, joined within TIMEOUT seconds (killed past it)."""
    import torch.multiprocessing as mp

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        context = mp.spawn(torch_member, args=(P, folder, T, chunk, repeats, cores), nprocs=P, join=False)
        deadline = time.monotonic() + TIMEOUT
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"torch members (P={P}) did not finish within {TIMEOUT} s")
        members = [json.loads(Path(folder, f"member{r}.json").read_text()) for r in range(P)]
    return [
        row("torch", P, x, T, chunk, max(m[x][0] for m in members), [m[x][1] for m in members])
        for x in members[0]
    ]


# --- rows, table, plot ---------------------------------------------------------------------------------


def row(engine: str, P: int, exchange: str, T: int, chunk: int, seconds: float, received: list[int]) -> dict:
    """One result; ``received`` holds the bytes of each member that was counted (all must match)."""
    expected = 0 if exchange == NONE else model(P, exchange, traced=engine == "jax")
    return {
        "engine": engine, "P": P, "exchange": exchange, "T": T, "T_member": T // P, "chunk": chunk,
        "seconds": seconds, "measured_bytes": received[0], "model_bytes": expected,
        "equal": "yes" if all(b == expected for b in received) else "no",
    }  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print(
        f"{'engine':6s} {'P':>2s} {'exchange':9s} {'s/member':>9s} {'measured B':>11s} {'model B':>11s} equal"
    )
    for r in rows:
        print(
            f"{r['engine']:6s} {r['P']:2d} {r['exchange']:9s} {r['seconds']:9.3f} "
            f"{r['measured_bytes']:11d} {r['model_bytes']:11d} {r['equal']}"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for engine, color in zip(
        dict.fromkeys(r["engine"] for r in rows), ("tab:blue", "tab:orange"), strict=False
    ):
        for exchange, style in ((NONE, "*"), ("allgather", "o-"), ("scan", "s--")):
            line = [r for r in rows if r["engine"] == engine and r["exchange"] == exchange]
            label = f"{engine}, no group (whole T)" if exchange == NONE else f"{engine} {exchange}"
            ax.plot([r["P"] for r in line], [r["seconds"] for r in line], style, color=color,
                    markersize=12 if exchange == NONE else 6, label=label)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(MEMBERS, [str(P) for P in MEMBERS])
    title = f"one sequence over P members: T={rows[0]['T']}, p={POWER}, d=e={D_HEAD}, {HEADS} heads, CPU"
    ax.set(xlabel="P (members, sharing this machine's cores)", ylabel="forward seconds per member",
           title=title)  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="T = 2048, one repeat")
    parser.add_argument("--engines", default="jax,torch")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="sequence_cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    T, repeats = (2048, 1) if args.quick else (16384, args.repeats)
    rows = []
    for engine in args.engines.split(","):
        for P in MEMBERS:
            start = len(rows)
            if engine == "jax":
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    rows += pool.submit(jax_rows, P, T, args.chunk, repeats).result()
            elif engine == "torch":
                rows += torch_rows(P, T, args.chunk, repeats)
            else:
                parser.error(f"unknown engine {engine!r} (jax, torch)")
            print_table(rows[start:])
    print()
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{args.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / f"{args.name}.png")
    print(f"wrote {args.out / args.name}.csv and .png")
    wrong = [r for r in rows if r["equal"] != "yes"]
    if wrong:
        print(f"{len(wrong)} rows' measured bytes differ from the model", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
