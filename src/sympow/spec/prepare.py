"""From a validated request to the arrays every form works on.

Dtype rule (math.md sections 7 and 9): scores inside a block are computed in float32 for float16,
bfloat16 and float32 inputs and in float64 for float64; the output is cast back to the input dtype. The
state path (features, S, z) runs in ``request.state_dtype`` (``checks.resolve_state_dtype``): by default
the inputs' accumulation dtype for kernels of degree <= 4 and float64 above. phi(q).S sums terms of both
signs whose total, (u_q . u_k)^p, can be far smaller than they are, so a float32 state path errs by about
u32 times the state-path condition number c_i of math.md 9 (large for a query nearly orthogonal to every
key, and about d^{p/2} for random directions, hence float64 above degree 4); ``state_dtype="float64"``
makes that term vanish. Rotary angles are accumulated in float64 where the namespace has it. Every array
is broadcast to the common batch shape here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from .checks import Request
from .executor import REFERENCE, Executor, Scan
from .features import log_norm
from .kernel import Kernel
from .rotary import _wrap, accumulate_angles, restarted_angles, rotate
from .state import State


@dataclass(frozen=True)
class Prepared:
    """Inputs of the forms, broadcast to batch shape B and in the compute dtype.

    yq, yk [B, T, d]: sigma^{1/2} R(mu_t) x_t (rectified for relu), with their directions q_dir, k_dir
    (u [B, T, d], log norm [B, T]: ``features.log_norm``, computed once for every step); v [B, T, e]; g [B, T]
    log-gates or None; a, b [B, T] proportions or None, with query_weight and key_weight [B, T, H] their
    (cos, sin)(pi a / 2) and (cos, sin)(pi b / 2); the resumed sums ``initial_S`` [.., D', e] and
    ``initial_z`` [.., D'] as the State holds them (None unless ``resumed``) and the log scale
    ``initial_scale`` M [B] (-inf unless resumed); mu_end [B, d/2] (mod 2 pi) or None. The state path
    works in ``state_dtype``.

    The resumed sums are kept in the State's own layout and leading axes (broadcasting against B where
    they are used), with no copy where they already have the state dtype: the parallel form, which
    serves decoding (T = 1), queries and extends them there, so a decoding step reads the state once
    and writes it once, as its arithmetic does. The recurrent and chunked forms take the packed
    SZ [B, D, H*(e+1)] of ``initial`` (one copy, made when asked for); for an empty state it is zeros
    made then, so that a parallel call allocates no state it does not return.
    """

    xp: Any
    kernel: Kernel
    yq: Any
    yk: Any
    q_dir: tuple[Any, Any]
    k_dir: tuple[Any, Any]
    v: Any
    g: Any
    a: Any
    b: Any
    query_weight: Any
    key_weight: Any
    initial_S: Any  # the resumed S [.., D', e] in the state dtype, or None (see ``initial``)
    initial_z: Any  # the resumed z [.., D'], or None
    initial_scale: Any
    mu_end: Any
    normalize: bool
    eps: float
    chunk_size: int
    state_dtype: Any
    scan: Scan
    state_class: type[State] = State
    unbroken_g: Any = None  # packed sequences: the log-gates as given (``g`` has -inf at every boundary)
    starts: tuple[int, ...] | None = None  # packed sequences: ``Request.packed_starts``

    @property
    def T(self) -> int:
        return self.yq.shape[-2]

    @property
    def e(self) -> int:
        return self.v.shape[-1]

    @property
    def halves(self) -> int:
        return 1 if self.key_weight is None else self.key_weight.shape[-1]

    @property
    def resumed(self) -> bool:
        return self.initial_S is not None

    @property
    def initial(self) -> Any:
        """SZ [B, D, H*(e+1)] of the initial state: the resumed one packed, or zeros, made now (a fresh
        array at each access; a form reads it once)."""
        batch = self.yq.shape[:-2]
        if self.resumed:
            return pack_sums(self.initial_S, self.initial_z, batch, self.halves, self.xp)
        shape = (*batch, self.kernel.feature_size(self.yq.shape[-1]), self.halves * (self.e + 1))
        return self.xp.zeros(shape, dtype=self.state_dtype, device=device(self.yq))

    def back(self, partial: tuple[Any, ...]) -> tuple[Any, ...]:
        """A partial result (num, den, m) of the state path, in the compute dtype of the scores."""
        return tuple(self.xp.astype(x, self.yq.dtype) for x in partial)

    def state_direction(self, direction: tuple[Any, Any]) -> tuple[Any, Any]:
        """A direction (u, log norm) in the state's dtype."""
        return self.for_state(direction[0]), self.for_state(direction[1])

    def for_state(self, x: Any) -> Any:
        """x in the state's accumulation dtype (None stays None)."""
        return None if x is None else self.xp.astype(x, self.state_dtype)


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """float64 stays float64; every other floating dtype computes in float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32


def prepare(
    request: Request,
    executor: Executor = REFERENCE,
    *,
    resume: bool = True,
    angle: Any = None,
    segments: Any = None,
) -> Prepared:
    """The request's inputs for the forms. ``resume=False`` ignores the sums of ``initial_state`` (the
    forms start from an empty state) and ``angle`` [B, d/2], if given, replaces the rotary angle entering
    token 0: what a member of a sequence group computes its slice from (``sequence``). ``segments``
    (``packed.Segments``) packs N sequences: the gates get -inf at every sequence's first token (the
    given ones are kept as ``unbroken_g``), the rotary angle restarts there from that sequence's entering
    angle, ``mu_end`` holds each sequence's final angle [N, B, d/2], and the forms start empty."""
    xp = request.xp
    work = compute_dtype(xp, request.dtype)
    batch = request.batch_shape
    T, d, e = request.T, request.d, request.e

    def cast(x: Any, tail: tuple[int, ...]) -> Any:
        return xp.broadcast_to(xp.astype(x, work), (*batch, *tail))

    q, k, v = cast(request.q, (T, d)), cast(request.k, (T, d)), cast(request.v, (T, e))
    state = request.initial_state
    mu_end = None
    if request.uses_rotary:
        increments = (
            xp.zeros((*batch, T, d // 2), dtype=work, device=request.device)
            if request.rotary is None
            else xp.broadcast_to(request.rotary, (*batch, T, d // 2))
        )
        if segments is None:
            mu0 = None if state is None or state.mu is None else xp.broadcast_to(state.mu, (*batch, d // 2))
            mu0 = mu0 if angle is None else angle
            mu, mu_end = accumulate_angles(increments, mu0, xp)
        else:
            mu, mu_end = _packed_angles(increments, state, segments, batch, xp)
        cos, sin = xp.astype(xp.cos(mu), work), xp.astype(xp.sin(mu), work)
        q = rotate(q, cos, sin, request.rotary_layout, xp)
        k = rotate(k, cos, sin, request.rotary_layout, xp)
    if request.kernel.rectify:
        q, k = xp.maximum(q, 0.0), xp.maximum(k, 0.0)
    root_scale = math.sqrt(request.scale)
    g = None if request.log_gate is None else cast(request.log_gate, (T,))
    unbroken_g = g
    if segments is not None:  # no key reaches a query across a boundary
        resume = False
        g = xp.zeros((*batch, T), dtype=work, device=request.device) if g is None else g
        g = xp.where(segments.starts, xp.full_like(g, -math.inf), g)
    a = b = query_weight = key_weight = None
    if request.proportions is not None:
        a, b = (cast(x, (T,)) for x in request.proportions)
        query_weight, key_weight = (_half_weights(x, xp) for x in (a, b))
    state_dtype = getattr(xp, request.state_dtype)
    state = state if resume else None
    initial_S = initial_z = None
    initial_scale = xp.full(batch, -math.inf, dtype=state_dtype, device=request.device)
    if state is not None:
        initial_S, initial_z = (xp.astype(x, state_dtype, copy=False) for x in (state.S, state.z))
        initial_scale = xp.broadcast_to(xp.astype(state.log_scale, state_dtype), batch)
    yq, yk = q * root_scale, k * root_scale
    return Prepared(
        xp=xp, kernel=request.kernel, yq=yq, yk=yk, q_dir=log_norm(yq, xp), k_dir=log_norm(yk, xp), v=v,
        g=g, a=a, b=b,
        query_weight=query_weight, key_weight=key_weight, initial_S=initial_S, initial_z=initial_z,
        initial_scale=initial_scale, mu_end=mu_end,
        normalize=request.normalize, eps=request.eps, chunk_size=request.chunk_size,
        state_dtype=state_dtype, scan=executor.scan(xp), state_class=request.state_class,
        unbroken_g=unbroken_g, starts=request.packed_starts,
    )  # fmt: skip


def _packed_angles(increments: Any, state: Any, segments: Any, batch: tuple[int, ...], xp: Any) -> Any:
    """(mu [B, T, d/2], each sequence's final angle [N, B, d/2] mod 2 pi) of packed sequences: the angle
    restarts at each sequence's first token from its state's mu (or 0); an empty sequence keeps it."""
    half = increments.shape[-1]
    lead = (segments.count, *batch, half)
    mu0 = None if state is None or state.mu is None else xp.broadcast_to(state.mu, lead)
    entering = None
    if mu0 is not None:  # [N, B, d/2] -> the angle entering each token's sequence [B, T, d/2]
        entering = xp.moveaxis(xp.take(mu0, segments.sequence, axis=0), 0, -2)
    mu = restarted_angles(increments, entering, segments.starts, xp)
    last = xp.clip(segments.ends - 1, 0, mu.shape[-2] - 1)
    ends = xp.moveaxis(xp.take(mu, last, axis=-2), -2, 0)  # [N, B, d/2]
    empty = xp.reshape(segments.lengths == 0, (segments.count, *(1,) * (ends.ndim - 1)))
    kept = xp.zeros_like(ends) if mu0 is None else xp.astype(mu0, ends.dtype)
    ends = xp.where(empty, kept, ends)
    return mu, _wrap(ends, xp)


def _half_weights(x: Any, xp: Any) -> Any:
    """[..., T] -> [..., T, 2]: (cos, sin)(pi x / 2), the two halves of the proportion weight."""
    angle = (math.pi / 2) * x
    return xp.stack([xp.cos(angle), xp.sin(angle)], axis=-1)


def pack_sums(S: Any, z: Any, batch: tuple[int, ...], halves: int, xp: Any) -> Any:
    """(S [.., H*D, e], z [.., H*D]) -> SZ [*batch, D, H*(e+1)], the halves side by side (a copy)."""
    size, e = S.shape[-2] // halves, S.shape[-1]
    S = xp.broadcast_to(S, (*batch, halves * size, e))
    z = xp.broadcast_to(z, (*batch, halves * size))
    sz = xp.concat([S, z[..., None]], axis=-1)
    sz = xp.reshape(sz, (*batch, halves, size, e + 1))
    sz = xp.permute_dims(sz, (*range(len(batch)), len(batch) + 1, len(batch), len(batch) + 2))
    return xp.reshape(sz, (*batch, size, halves * (e + 1)))


def unpack_state(packed: Any, scale: Any, prepared: Prepared) -> State:
    """SZ [B, D, H*(e+1)] and log scale [B] -> State, with the final rotary angle."""
    xp, halves, e = prepared.xp, prepared.halves, prepared.e
    batch, size = packed.shape[:-2], packed.shape[-2]
    sz = xp.reshape(packed, (*batch, size, halves, e + 1))
    sz = xp.permute_dims(sz, (*range(len(batch)), len(batch) + 1, len(batch), len(batch) + 2))
    sz = xp.reshape(sz, (*batch, halves * size, e + 1))
    return prepared.state_class(S=sz[..., :e], z=sz[..., e], mu=prepared.mu_end, log_scale=scale)
