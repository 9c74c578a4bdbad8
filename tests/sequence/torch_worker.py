"""``python -m tests.sequence.torch_worker P OUT [case ids]``: the cases of ``cases`` on P gloo processes
(spawned here, a file:// rendezvous, a 60 s timeout on every collective), slices of unequal lengths.
Rank r writes OUT/rank{r}.json: {case id: {"y", "state", "mu", "grad" errors}, "refusals": [...]}, the
errors relative to the single-process call on the whole sequence, and the messages of the bad calls
(each must raise a ValueError on every rank, not hang)."""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sympow
from sympow.spec import sequence
from sympow.testing.tolerances import relative_error

from .cases import CASES, NAMES, PREFIX, T, inputs, model_bytes, output_weights, relative

CUTS = {1: [0, T], 2: [0, 7, T], 4: [0, 5, 11, 12, T]}  # slices of unequal lengths, none a multiple of 3


def attend(args, state, case, **extra):
    q, k, v, g, r, a, b = args
    return sympow.attention(
        q, k, v, log_gate=g, rotary=r, proportions=(a, b), initial_state=state, backend="torch",
        **case.options(), **extra,
    )  # fmt: skip


def loss_of(y, state, weight, with_state):
    z = state.unscaled()[1]
    out = torch.sum(y.double() * weight)
    return out + torch.sum(z * torch.cos(torch.arange(z.shape[-1], dtype=z.dtype))) if with_state else out


def run(case, x, weight, rank, P):
    dtype = getattr(torch, case.dtype)
    lo, hi = CUTS[P][rank], CUTS[P][rank + 1]

    def tensors(part):
        return [torch.tensor(x[n][:, part]).to(dtype).double().requires_grad_() for n in NAMES]

    whole, first = tensors(slice(PREFIX, None)), tensors(slice(None, PREFIX))
    exact = case.dtype == "float64"
    reference_case = case if exact else type(case)(case.kernel, case.power, case.normalize, form="parallel")
    with torch.no_grad():
        state = attend([a.to(dtype) for a in first], None, case)[1] if case.resume else None
        reference_state = attend(first, None, reference_case)[1] if case.resume else None
    y1, s1 = attend(whole, reference_state, reference_case)
    mine = [a[:, lo:hi].detach().to(dtype).requires_grad_() for a in whole]
    with sequence.traffic() as record:
        y2, s2 = attend(mine, state, case, sequence_group=dist.group.WORLD, sequence_exchange=case.exchange)
    states = (s1.unscaled(), s2.unscaled())
    result = {
        "bytes": sum(nbytes for _, nbytes in record),
        "model_bytes": model_bytes(case, P, s2.z.shape[-1], traced=False),
        "y": relative_error(y2.detach(), y1.detach()[:, lo:hi], whole[2].detach(), normalize=case.normalize),
        "state": max(relative(b.detach(), a.detach().numpy()) for a, b in zip(*states, strict=True)),
        "mu": float((s1.mu - s2.mu).detach().abs().max()),
    }
    if case.gradients:
        expected = torch.autograd.grad(loss_of(y1, s1, weight, True), whole)
        got = torch.autograd.grad(loss_of(y2, s2, weight[:, lo:hi], rank == P - 1), mine)
        pairs = zip(got, expected, strict=True)
        result["grad"] = max(relative(g.double(), e[:, lo:hi].numpy()) for g, e in pairs)
    return result


def variant(x, rank: int, P: int) -> float:
    """conformal_sympow (gates and rotary from logits) split over the group, against the whole call."""
    lo, hi = CUTS[P][rank], CUTS[P][rank + 1]
    q, k, v = (torch.tensor(x[n][:, PREFIX:]) for n in ("q", "k", "v"))
    u, r = torch.tensor(x["a"][:, PREFIX:]), torch.tensor(x["b"][:, PREFIX:])
    options = dict(max_length=64, chunk_size=3, form="chunked", return_state=True)
    whole, _ = sympow.conformal_sympow(q, k, v, gate_logits=u, rotary_logits=r, **options)
    part, _ = sympow.conformal_sympow(
        q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], gate_logits=u[:, lo:hi], rotary_logits=r[:, lo:hi],
        sequence_group=dist.group.WORLD, **options,
    )  # fmt: skip
    return relative(part, whole[:, lo:hi].numpy())


def refusals(rank: int) -> list[str]:
    """The bad calls: a slice whose d disagrees across members, an initial state that differs, a NaN in
    the last member's slice only (which that member refuses, and the others with it)."""
    group, messages = dist.group.WORLD, []
    q = torch.randn(2, 5 + rank, 4 + 2 * (rank % 2), dtype=torch.float64)
    v = torch.randn(2, 5 + rank, 3, dtype=torch.float64)
    for call in (
        lambda: sympow.attention(q, q, v, sequence_group=group),
        lambda: sympow.attention(q[..., :4], q[..., :4], v, sequence_group=group, initial_state=_state(rank)),
        lambda: sympow.attention(_nan_on_last(q[..., :4], rank), q[..., :4], v, sequence_group=group),
    ):
        try:
            call()
            messages.append("no error")
        except ValueError as error:
            messages.append(str(error))
    return messages


def _nan_on_last(q: torch.Tensor, rank: int) -> torch.Tensor:
    q = q.clone()
    if rank == dist.get_world_size() - 1:
        q[0, 0, 0] = float("nan")
    return q


def _state(rank: int):
    x = torch.ones(1, 3, 4, dtype=torch.float64)
    state = sympow.attention(x, x, x[..., :3], return_state=True)[1]
    return state._replace(S=state.S + rank)


def worker(rank: int, P: int, rendezvous: str, out: str, wanted: list[str]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=P,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    x, weight = inputs(), torch.tensor(output_weights())
    results = {case.id: run(case, x, weight, rank, P) for case in CASES if not wanted or case.id in wanted}
    results["variant"] = variant(x, rank, P)
    if P > 1:
        results["refusals"] = refusals(rank)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()  # no member tears its group down while another still talks to it
    dist.destroy_process_group()


def main() -> None:
    P, out = int(sys.argv[1]), sys.argv[2]
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(P, str(Path(folder, "rendezvous")), out, sys.argv[3:]), nprocs=P, join=True)


if __name__ == "__main__":
    main()
