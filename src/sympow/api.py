"""``sympow.attention``: validate, choose a backend, run one form, return (layout.md)."""

from __future__ import annotations

from typing import Any

from . import backends
from .spec import State, resolve_form, validate


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    kernel: str = "sympow",
    power: int = 2,
    scale: float | None = None,
    log_gate: Any = None,
    proportions: tuple[Any, Any] | None = None,
    rotary: Any = None,
    rotary_layout: str = "half",
    normalize: bool = True,
    eps: float = 0.0,
    form: str = "auto",
    chunk_size: int = 64,
    initial_state: State | None = None,
    return_state: bool = False,
    backend: str | None = None,
    state_dtype: str | None = None,
    sequence_group: Any = None,
    sequence_exchange: str = "auto",
    cu_seqlens: Any = None,
) -> Any:
    r"""Causal symmetric-power attention and its relatives (docs: math.md).

    With s_ij = sigma <q~_i, k~_j> (q~, k~ rotated by the accumulated angles mu_t = mu_0 + sum_{l<=t} w_l),
    kappa_ij the kernel (``sympow``: s^p; ``taylor``: sum_{n<=p} s^n/n!; ``relu``: sigma <relu q~, relu k~>;
    ``identity``: s) and w_ij the position weight (gates exp(sum_{l=j+1..i} g_l) times proportions
    cos(pi/2 (a_i - b_j))), for j <= i:

        N_i = sum_j w_ij kappa_ij v_j,  Z_i = sum_j w_ij kappa_ij,  y_i = N_i / (Z_i + eps)  (or N_i)

    plus the terms of ``initial_state``. Where Z_i + eps = 0, y_i = 0.

    Shapes: q, k [..., T, d]; v [..., T, e]; log_gate [..., T] (<= 0); proportions (a, b) each [..., T] in
    [0, 1]; rotary [..., T, d/2] angle increments (d even). Leading axes broadcast. Returns y [..., T, e]
    of the inputs' library, device and dtype (float16/bfloat16 accumulate in float32), and with
    ``return_state=True`` the pair (y, State). ``form`` is "parallel", "recurrent", "chunked" (chunks of
    ``chunk_size`` tokens) or "auto" (by the FLOP model); all compute the same function.

    ``state_dtype`` is the dtype of the state path (features, S, z; math.md 9): None for the inputs'
    accumulation dtype (float32 for float16, bfloat16 and float32, float64 for float64) when the kernel's
    highest degree is <= 4 and float64 above; "float64" for the exact state path with any input dtype;
    "float32". A float32 state path errs by about 2^-24 times the condition number of math.md 9 (see
    ``sympow.testing.condition_numbers``). The returned State holds S, z and log_scale in that dtype,
    and a resumed State is converted to it.

    ``power`` is p of sympow and taylor: an int >= 1, exact in the compute dtype (<= 2^24 for 16- and
    32-bit inputs, <= 2^53 for float64), and <= 170 for taylor (1/p! a normal float64). relu and
    identity are of degree 1 and take no power: ``power`` must be left at its default, 2, or be 1 (their
    degree); any other value is refused rather than ignored. ``eps`` (>= 0) is added to the denominator
    of the normalised output only, so ``eps > 0`` with ``normalize=False`` is refused. A kernel whose
    feature size D' (math.md 1) exceeds 2^63 - 1 is refused in every form, and a call that builds arrays
    of D' rows (recurrent, chunked, a parallel form that returns or resumes a State) is refused where the
    largest exceeds ``sympow.spec.checks.MAX_FEATURE_ELEMENTS`` entries (2^36; the parallel form without
    a State builds none).

    ``sequence_group`` splits one sequence over the members of a group (math.md 11, docs/sequence.md):
    each member calls ``attention`` with its own consecutive slice of T (in rank order) and the same
    everything else; ``initial_state`` is the state before the whole sequence (the same on every
    member) and the returned State the whole sequence's, on every member. A JAX mesh axis name inside
    ``jax.shard_map`` (jax backend; equal slices) or a ``torch.distributed`` ProcessGroup (torch
    backend; slices may differ in length). ``sequence_exchange`` is how the slices' states meet:
    "allgather" (one all-gather, then a local combine), "scan" (a log-depth scan of pairwise exchanges),
    or "auto" (the cost model of ``sympow.spec.sequence``). Differentiable through both, on every
    member; torch members whose shapes, options or initial states disagree all raise a ValueError.

    ``cu_seqlens`` packs N sequences along T (math.md 10): integer offsets 0 = o_0 <= o_1 <= ... <=
    o_N = T (a 1-D integer array of q's library, or a Python sequence of ints; empty sequences allowed).
    The result equals N separate calls on the slices [o_n, o_{n+1}): gates, rotary angles and the state
    restart at every boundary, and every leading batch axis shares the offsets. ``initial_state`` and
    the returned State then carry a leading axis of N, one state per sequence. Every form computes it
    in one pass over T (the sequences share blocks and chunks); an initial state or a returned State
    adds O((T + N C) D' e) work (``sympow.spec.packed``). Not with ``sequence_group``.

    Raises ValueError or TypeError, naming the argument, on bad input, before computing anything: every
    array argument (q, k, v, log_gate, proportions, rotary, each field of initial_state) must be a dense
    array of the standard of q's library and device, holding values (no torch ``meta`` tensor, sparse
    tensor, NumPy masked array or matrix, Numba device array), of dtype float16, bfloat16, float32 or
    float64.
    """
    try:
        request = validate(
            q, k, v, kernel=kernel, power=power, scale=scale, log_gate=log_gate,
            proportions=proportions, rotary=rotary, rotary_layout=rotary_layout, normalize=normalize,
            eps=eps, form=form, chunk_size=chunk_size, initial_state=initial_state,
            return_state=return_state, state_dtype=state_dtype, sequence_group=sequence_group,
            sequence_exchange=sequence_exchange, cu_seqlens=cu_seqlens,
        )  # fmt: skip
        _, implementation = backends.select(request, backend)
    except (ValueError, TypeError):
        _refuse_together(sequence_group)
        raise
    y, state = implementation.run(request, resolve_form(request))
    return (y, state) if return_state else y


def _refuse_together(group: Any) -> None:
    """Where this member of a torch process group refuses its own call, tell the other members, which
    would otherwise wait for it in the exchange (``spec.sequence.refuse``); best effort, as the call's own
    error is raised next whatever happens here. JAX members trace one program: nothing to tell."""
    if group is None or isinstance(group, str):
        return
    try:
        from .backends.torch_group import ProcessGroup
        from .spec.sequence import refuse

        refuse(ProcessGroup(group))
    except Exception:  # the original error matters, not this one
        pass
