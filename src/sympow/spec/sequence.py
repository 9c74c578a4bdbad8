"""Sequence parallelism: one sequence split over the P members of a group (math.md section 11).

Member r holds tokens [t_r, t_{r+1}) of one sequence, in rank order. Two facts make the split exact:

- Rotary: the angle entering member r is mu_0 + sum_{l<r} W_l, W_l the sum of member l's increments
  (d/2 numbers each), exchanged by one all-gather before the keys are rotated.
- State: from an empty state, member r computes its slice's partial outputs and its slice's state, the
  pair e_r = (G_r, S_r): G_r the sum of its log-gates, S_r = (S, z) in log scale M_r. With
  (G_a, S_a) . (G_b, S_b) = (G_a + G_b, exp(G_b) S_a + S_b), associative, the state entering member r is
  (0, S_0) . e_0 . ... . e_{r-1}, an exclusive scan; its query, f(q~_i)^T S_in exp(sum of the gates of
  the slice up to i), is merged into the slice's partial outputs, and the whole sequence's final state
  is (0, S_0) . e_0 . ... . e_{P-1}, on every member.

Two exchanges compute the scan (``checks.EXCHANGES``); n = D'(e+1) + 2 numbers per batch entry is one element
(S and z, G and M):

- "allgather": one all-gather of every member's element, then the combine, locally: each member receives
  (P - 1) n numbers from the others.
- "scan": the Hillis-Steele inclusive scan, ceil(log2 P) steps of pairwise exchanges (member r receives
  from r - 2^k), then one shift by a member for the exclusive scan and, when the final state is asked
  for, one broadcast of the last member's inclusive scan: (ceil(log2 P) + 1 + [return_state]) n numbers.

``choose_exchange`` is the cost model: latency ``LATENCY`` seconds per collective and ``BANDWIDTH``
bytes/s per member, allgather when its time, LATENCY + P n b / BANDWIDTH, is at most the scan's,
steps (LATENCY + n b / BANDWIDTH). The bytes are counted by ``exchanged_bytes`` (and by the groups,
which the tests compare).

The collectives come from the executor (``Executor.group``): a ``Group`` of the framework (JAX mesh axis
inside ``jax.shard_map``, torch.distributed process group), each one differentiable.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

from array_api_compat import device

from .checks import Request
from .executor import Executor
from .forms import FORMS, query_by_chunks
from .poison import call_flag, poisoned
from .prepare import pack_sums, prepare
from .rotary import _wrap, accumulate_angles, has_float64
from .state import State
from .steps import Element, combine, finish, merge

LATENCY = 20e-6  # seconds per collective (order of NCCL's and of gloo's on one host)
BANDWIDTH = 25e9  # bytes per second per member


Traffic = list[tuple[str, int]]
_traffic: contextvars.ContextVar[Traffic | None] = contextvars.ContextVar("traffic", default=None)


@contextlib.contextmanager
def traffic() -> Iterator[Traffic]:
    """Inside the block, every collective of a sequence group appends (kind, bytes a receiving member
    gets) to the yielded list: (P - 1) x.nbytes for an all-gather, x.nbytes for a shift or a broadcast
    (0 where no member receives). Under jax.jit a collective is recorded when it is traced."""
    record: Traffic = []
    token = _traffic.set(record)
    try:
        yield record
    finally:
        _traffic.reset(token)


def count(kind: str, size: int, nbytes: int, step: int = 1) -> None:
    """Record one collective of ``kind`` ("all_gather", "shift", "last") on a group of ``size`` members
    moving arrays of ``nbytes`` (called by the groups; nothing outside a ``traffic`` block)."""
    record = _traffic.get()
    if record is None:
        return
    received = {"all_gather": (size - 1) * nbytes, "shift": nbytes if step < size else 0}
    record.append((kind, received.get(kind, nbytes if size > 1 else 0)))


class Group(Protocol):
    """The collectives of one sequence group, each differentiable in its array argument.

    signatures(signature) -> every member's list of ints (the same length on each), or None where the
    engine makes members agree by construction (a JAX mesh axis). eager_backward: True where each member
    runs its own backward pass (torch autograd), whose collectives must then be reached in one order on
    every member whatever its loss; False for one traced program (JAX).
    size: P (a Python int). rank: this member's index, an int or a 0-d integer array (JAX traces it).
    all_gather(x) -> [P, *x.shape], member l's x at l. shift(x, s) -> member r - s's x on member r, zeros
    on members r < s. last(x) -> member P - 1's x on every member.
    """

    size: int
    rank: Any
    eager_backward: bool

    def signatures(self, signature: list[int]) -> list[list[int]] | None: ...

    def all_gather(self, x: Any) -> Any: ...

    def shift(self, x: Any, s: int) -> Any: ...

    def last(self, x: Any) -> Any: ...


def _where(condition: Any, a: Any, b: Any, xp: Any) -> Any:
    """a where ``condition`` (a Python bool, or a 0-d array under a tracer), else b. An array ``where``
    even for a Python bool: both branches stay in the autograd graph, so that every member runs the
    backward of every collective, in the same order (a member that skipped one would hang the others)."""
    if isinstance(condition, bool):
        condition = xp.asarray(condition, device=device(a))
    return xp.where(condition, a, b)


def _select(condition: Any, a: Element, b: Element, xp: Any) -> Element:
    return Element(*(_where(condition, x, y, xp) for x, y in zip(a.fields(), b.fields(), strict=True)))


def _identity(like: Element, xp: Any) -> Element:
    return Element(
        xp.zeros_like(like.G), xp.full_like(like.M, -math.inf), xp.zeros_like(like.S), xp.zeros_like(like.z)
    )


def exchange_allgather(own: Element, group: Group, xp: Any) -> tuple[Element, Element]:
    """(exclusive scan at this member, the total): every member's element gathered, combined locally."""
    gathered = group.all_gather(own.flat(xp))  # [P, B, n]
    # from the gathered elements only, so that the total is typed alike on every member (JAX's vma)
    total = entering = _identity(own.like(gathered[0], xp), xp)
    for member in range(group.size):
        entering = _select(group.rank == member, total, entering, xp)
        total = combine(total, own.like(gathered[member], xp), xp)
    return entering, total


def exchange_scan(own: Element, group: Group, xp: Any, want_total: bool) -> tuple[Element, Element | None]:
    """(exclusive scan at this member, the total or None): a log-depth scan of pairwise exchanges."""
    inclusive, step = own, 1
    while step < group.size:
        received = _received(inclusive, group, step, xp)
        inclusive = combine(received, inclusive, xp)
        step *= 2
    entering = _received(inclusive, group, 1, xp)
    if not want_total:
        return entering, None
    flat = inclusive.flat(xp)
    if group.eager_backward:  # the broadcast reads the exclusive scan (by 0 times its sums), so that its
        flat = flat + 0 * (xp.sum(entering.S) + xp.sum(entering.z))  # backward runs before the shift's
    return entering, inclusive.like(group.last(flat), xp)


def _received(element: Element, group: Group, step: int, xp: Any) -> Element:
    """Member r - step's element on member r; the identity on members r < step (a shifted-in zero is an
    empty state only with M = -inf)."""
    shifted = element.like(group.shift(element.flat(xp), step), xp)
    return _select(group.rank >= step, shifted, _identity(element, xp), xp)


def scan_steps(P: int) -> int:
    """ceil(log2 P): the pairwise steps of the inclusive scan."""
    return max(P - 1, 0).bit_length()


def collectives(P: int, exchange: str, return_state: bool) -> int:
    """How many collectives of one element the state exchange runs: 1 all-gather, or ceil(log2 P) shifts,
    one more shift (the exclusive scan) and, for the final state, one broadcast (none of those for P = 1)."""
    if exchange == "allgather":
        return 1
    return scan_steps(P) + (P > 1) * (1 + int(return_state))


def element_bytes(batch: int, feature_size: int, e: int, itemsize: int) -> int:
    """Bytes of one exchanged element: batch entries times n = D'(e+1) + 2 numbers."""
    return batch * (feature_size * (e + 1) + 2) * itemsize


def model_bytes(
    P: int,
    exchange: str,
    batch: int,
    feature_size: int,
    e: int,
    itemsize: int,
    return_state: bool,
    rotary_numbers: int = 0,
    angle_itemsize: int = 8,
    traced: bool = False,
) -> int:
    """Bytes a receiving member gets: (P - 1) elements for the all-gather, one per shift or broadcast for
    the scan; plus (P - 1) rotary totals of ``rotary_numbers`` angles (batch x d/2) when rotary is used;
    plus, where the values cannot be read (``traced``: under jax.jit, always on the jax backend), the
    (P - 1) batch float32 flags of forbidden values (``poison``)."""
    element = element_bytes(batch, feature_size, e, itemsize)
    state = (P - 1) * element if exchange == "allgather" else collectives(P, exchange, return_state) * element
    return state + (P - 1) * (rotary_numbers * angle_itemsize + traced * batch * 4)


def model_seconds(P: int, exchange: str, element: int, return_state: bool) -> float:
    """The cost model's time of the state exchange: LATENCY per collective plus bytes / BANDWIDTH."""
    if exchange == "allgather":
        return LATENCY + (P - 1) * element / BANDWIDTH
    return collectives(P, exchange, return_state) * (LATENCY + element / BANDWIDTH)


def choose_exchange(request: Request, P: int) -> str:
    """'allgather' or 'scan', whichever ``model_seconds`` says is faster (allgather on a tie)."""
    batch = math.prod(request.batch_shape)
    itemsize = 8 if request.state_dtype == "float64" else 4
    element = element_bytes(batch, request.feature_size, request.e, itemsize)
    allgather = model_seconds(P, "allgather", element, request.return_state)
    scan = model_seconds(P, "scan", element, request.return_state)
    return "allgather" if allgather <= scan else "scan"


def entering_angle(request: Request, group: Group) -> tuple[Any, Any]:
    """(mu entering this member's slice [B, d/2], the whole sequence's final angle), both mod 2 pi."""
    xp, batch, half = request.xp, request.batch_shape, request.d // 2
    state = request.initial_state
    increments = (
        xp.zeros((*batch, request.T, half), dtype=request.dtype, device=request.device)
        if request.rotary is None
        else xp.broadcast_to(request.rotary, (*batch, request.T, half))
    )
    _, local_total = accumulate_angles(increments, None, xp)
    totals = group.all_gather(local_total)  # [P, B, d/2]
    running = xp.zeros_like(totals[0])  # from the gathered totals: typed alike on every member
    if state is not None and state.mu is not None:
        running = xp.astype(xp.broadcast_to(state.mu, (*batch, half)), local_total.dtype)
    entering = running
    for member in range(group.size):
        entering = _where(group.rank == member, running, entering, xp)
        running = _wrap(running + totals[member], xp)
    return entering, running


SIGNATURE_LENGTH = 17  # the fields of ``signature``
REFUSED = -1  # every entry of the signature of a member whose own call was refused (fields are >= 0)


def refuse(group: Group) -> None:
    """Take part in the members' check (``check_members``) as a member whose own inputs were refused, so
    that the others raise too instead of waiting for it in the exchange."""
    group.signatures([REFUSED] * SIGNATURE_LENGTH)


def signature(request: Request) -> dict[str, int]:
    """What every member of a group must agree on, as ints: the batch shape, d, e, the options and the
    initial state's values (T may differ; so may the form, as every form computes the same function)."""
    xp, state = request.xp, request.initial_state

    def code(value: Any) -> int:
        return zlib.crc32(repr(value).encode())

    fields = {
        "batch shape": code(request.batch_shape),
        "d": request.d,
        "e": request.e,
        "kernel and power": code(request.kernel),
        "scale": code(request.scale),
        "dtype": code(str(request.dtype)),
        "state_dtype": code(request.state_dtype),
        "log_gate given": int(request.log_gate is not None),
        "rotary given": int(request.rotary is not None),
        "proportions given": int(request.proportions is not None),
        "rotary_layout": code(request.rotary_layout),
        "normalize": int(request.normalize),
        "eps": code(request.eps),
        "return_state": int(request.return_state),
        "sequence_exchange": code(request.sequence_exchange),
        "initial_state given": int(state is not None),
        "initial_state values": 0,
    }  # fmt: skip  (a fixed set of fields: every member's signature has the same length)
    if state is not None and request.values_checked:
        wide = xp.float64 if has_float64(xp) else xp.float32
        sums = [float(xp.sum(xp.astype(x, wide))) for x in state if x is not None]
        fields["initial_state values"] = code(sums)
    return fields


def check_members(request: Request, group: Group) -> None:
    """ValueError, raised on every member alike, where the members' calls disagree (no member then enters
    an exchange that the others would not match, which would hang)."""
    fields = signature(request)
    everyone = group.signatures(list(fields.values()))
    if everyone is None:
        return
    refused = [member for member, entries in enumerate(everyone) if entries[0] == REFUSED]
    if refused:
        raise ValueError(
            f"sequence_group members {refused} refused their own inputs (their error says why), so no "
            "member computes"
        )
    readable = {"d", "e", "normalize", "return_state"} | {name for name in fields if name.endswith("given")}
    differing = [
        name + (f" (by member: {[s[i] for s in everyone]})" if name in readable else "")
        for i, name in enumerate(fields)
        if len({s[i] for s in everyone}) > 1
    ]
    if differing:
        raise ValueError(
            f"sequence_group members must agree on {', '.join(differing)}: each member holds a slice of one "
            "sequence (its own T), with every other shape and option, and the initial state, the same"
        )


def run(request: Request, form: str, executor: Executor, exchange: str) -> tuple[Any, State | None]:
    """(y of this member's slice, the whole sequence's final State or None), in the forms' dtypes."""
    xp = request.xp
    group = executor.group(request.sequence_group)
    check_members(request, group)
    angle = final_angle = None
    if request.uses_rotary:
        angle, final_angle = entering_angle(request, group)
    p = prepare(request, executor, resume=False, angle=angle)
    partial, local = FORMS[form](p, True, finished=False)
    G = xp.sum(p.for_state(p.g), axis=-1) if p.g is not None else xp.zeros_like(local.log_scale)
    own = Element(G, local.log_scale, local.S, local.z)
    if exchange == "auto":
        exchange = choose_exchange(request, group.size)
    if exchange == "allgather":
        entering, total = exchange_allgather(own, group, xp)
    else:
        entering, total = exchange_scan(own, group, xp, request.return_state)
    state = request.initial_state
    if state is not None:
        start = xp.broadcast_to(xp.astype(state.log_scale, p.state_dtype), G.shape)
        S0 = xp.broadcast_to(xp.astype(state.S, p.state_dtype), own.S.shape)
        z0 = xp.broadcast_to(xp.astype(state.z, p.state_dtype), own.z.shape)
        first = Element(xp.zeros_like(start), start, S0, z0)
        entering = combine(first, entering, xp)
        total = None if total is None else combine(first, total, xp)
    packed = pack_sums(entering.S, entering.z, request.batch_shape, request.halves, xp)
    scale = xp.broadcast_to(entering.M, request.batch_shape)
    y = finish(merge(partial, query_by_chunks(p, packed, scale), xp), p.normalize, p.eps, xp)
    final = None
    if request.return_state:
        final = request.state_class(S=total.S, z=total.z, mu=final_angle, log_scale=total.M)
        if (
            exchange == "scan" and group.eager_backward
        ):  # y reads the broadcast total: every member runs its backward
            y = y + xp.astype(0 * (xp.sum(total.S) + xp.sum(total.z)), y.dtype)
    y = xp.astype(y, request.dtype)
    if request.values_checked:
        return y, final
    flags = group.all_gather(
        call_flag(request, xp.float32)
    )  # [P, B]: 0, or NaN on a member with a forbidden value
    before = whole = xp.zeros_like(flags[0])
    for member in range(group.size):
        before = _where(group.rank == member, whole, before, xp)
        whole = whole + flags[member]
    return poisoned(request, y, final, before, whole)
