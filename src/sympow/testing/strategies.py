"""Hypothesis strategies for sympow (public: ports of the library reuse them).

Shapes follow the test plan: T in 1..200, d in 2..64 (even where rotary is used), e in 1..8, p in
1..6, chunk_size in 1..T+3, and 0..2 leading batch axes of size 1..3. Arrays are never drawn element
by element: a case draws a seed and builds its inputs with ``make_inputs`` (bounded normal and
uniform values), which keeps example generation fast and the failing example reproducible from the
seed that Hypothesis prints.

The draws are weighted toward what users run (``KERNEL_WEIGHTS``, ``POWER_WEIGHTS`` and the weights of
the flags): sympow with p = 2 or 4, normalised, with gates and rotary, d spread up to 64 and T spread
over its range rather than piled at the small end. Every value of every range stays reachable.
``benchmarks/draw_distribution.py`` prints the resulting shares; tests/testing/test_strategies.py holds
them to their floors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from .inputs import convert, make_inputs

KERNELS = ("sympow", "taylor", "relu", "identity")
FORMS = ("parallel", "recurrent", "chunked")
LAYOUTS = ("half", "interleaved")
DTYPES = ("float64", "float32")

MAX_SEED = 2**32 - 1

# Relative weights of the draws. The first entry of each is what Hypothesis shrinks toward (the API's
# defaults: sympow, p = 2, normalised; features off).
KERNEL_WEIGHTS: dict[str, int] = {"sympow": 15, "taylor": 2, "relu": 2, "identity": 1}
POWER_WEIGHTS: dict[int, int] = {2: 6, 4: 5}  # every other power weighs 1
NORMALIZE_WEIGHTS: dict[bool, int] = {True: 6, False: 1}  # where the kernel allows normalised output
FEATURE_WEIGHTS: dict[str, dict[bool, int]] = {
    "gate": {False: 1, True: 2},
    "rotary": {False: 1, True: 2},
    "proportions": {False: 1, True: 1},
}
# T in three bands, short (<= 8), middle (9..max(max_T/2, 16)) and long, weighted 1:4:3; d in three bands,
# middle (5..16), small (<= 4) and large (17..max_d), weighted 2:1:2. The first band is the one
# Hypothesis shrinks toward, and the one its generator falls back to most often: T = 1 (an edge
# case worth the extra draws), but d = 5 rather than d = 2 (too special a case to hold a quarter of
# the draws).
SHORT_T, T_BAND_WEIGHTS = 8, (1, 4, 3)
SMALL_D, MIDDLE_D, D_BAND_WEIGHTS = 4, 16, (2, 1, 2)

Choice = TypeVar("Choice")


def weighted(weights: Mapping[Choice, int]) -> st.SearchStrategy[Choice]:
    """One of the keys of ``weights``, each drawn with probability proportional to its (integer)
    weight; Hypothesis shrinks toward the first key."""
    choices = [key for key, weight in weights.items() for _ in range(weight)]
    if not choices:
        raise ValueError("weighted() needs at least one positive weight")
    return st.sampled_from(choices)


def _bands(bounds: Sequence[tuple[int, int]], band_weights: Sequence[int]) -> st.SearchStrategy[int]:
    """An integer from one of the non-empty bands (lo, hi), the band drawn by its weight."""
    live = [(band, w) for band, w in zip(bounds, band_weights, strict=True) if band[0] <= band[1]]
    return weighted({band: w for band, w in live}).flatmap(lambda band: st.integers(*band))


def batch_shapes(*, max_axes: int = 2, max_size: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """Leading batch axes: 0..max_axes axes, each of size 1..max_size."""
    return st.lists(st.integers(1, max_size), max_size=max_axes).map(tuple)


def seq_lengths(*, min_T: int = 1, max_T: int = 200) -> st.SearchStrategy[int]:
    """T in min_T..max_T, from the bands ..8, 9..max(max_T/2, 16) and the rest, weighted
    ``T_BAND_WEIGHTS`` (empty bands dropped)."""
    if min_T > max_T:
        raise ValueError(f"min_T = {min_T} exceeds max_T = {max_T}")
    middle = max(max_T // 2, 2 * SHORT_T)
    bounds = (
        (min_T, min(SHORT_T, max_T)),
        (max(min_T, SHORT_T + 1), min(middle, max_T)),
        (max(min_T, middle + 1), max_T),
    )
    return _bands(bounds, T_BAND_WEIGHTS)


def head_dims(*, min_d: int = 2, max_d: int = 16, even: bool = False) -> st.SearchStrategy[int]:
    """d in min_d..max_d (even only, when ``even``), from the bands 5..16, ..4 and 17.., weighted
    ``D_BAND_WEIGHTS``."""
    step = 2 if even else 1
    lo, hi = (min_d + step - 1) // step, max_d // step  # d = step * n, n in lo..hi
    if lo > hi:
        raise ValueError(f"no {'even ' if even else ''}d in {min_d}..{max_d}")
    bounds = (
        (max(lo, SMALL_D // step + 1), min(hi, MIDDLE_D // step)),
        (lo, min(hi, SMALL_D // step)),
        (max(lo, MIDDLE_D // step + 1), hi),
    )
    return _bands(bounds, D_BAND_WEIGHTS).map(lambda n: step * n)


def value_dims(*, max_e: int = 8) -> st.SearchStrategy[int]:
    return st.integers(1, max_e)


def powers(*, max_p: int = 6, even: bool | None = None, min_p: int = 1) -> st.SearchStrategy[int]:
    """p in min_p..max_p, weighted by ``POWER_WEIGHTS`` (2 and 4 most often); only even (or only odd)
    ones when ``even`` is True (False)."""
    allowed = [p for p in range(min_p, max_p + 1) if even is None or (p % 2 == 0) == even]
    if not allowed:
        raise ValueError(f"no {'' if even is None else 'even ' if even else 'odd '}p in {min_p}..{max_p}")
    ordered = sorted(allowed, key=lambda p: (-POWER_WEIGHTS.get(p, 1), p))
    return weighted({p: POWER_WEIGHTS.get(p, 1) for p in ordered})


def chunk_sizes(T: int) -> st.SearchStrategy[int]:
    """chunk_size in 1..T+3 (sizes past T make one partial chunk)."""
    return st.integers(1, T + 3)


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, MAX_SEED)


def feature_size(kernel: str, d: int, p: int) -> int:
    """D of a kernel's exact feature map (without the proportions doubling)."""
    if kernel == "sympow":
        return math.comb(d + p - 1, p)
    if kernel == "taylor":
        return math.comb(d + p, p)
    return d


def normalizable(kernel: str, p: int) -> bool:
    """Whether normalised output is allowed: kappa >= 0 for every score (even sympow, relu)."""
    return kernel == "relu" or (kernel == "sympow" and p % 2 == 0)


@dataclass(frozen=True)
class AttentionCase:
    """One drawn attention problem: NumPy inputs (already rounded to ``dtype``) and the options."""

    inputs: dict[str, Any] = field(repr=False)
    batch: tuple[int, ...]
    T: int
    d: int
    e: int
    seed: int
    kernel: str
    power: int
    normalize: bool
    scale: float | None
    eps: float
    rotary_layout: str
    chunk_size: int
    dtype: str

    @property
    def id(self) -> str:
        return case_id(self.batch, self.T, self.d)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis's pretty printer, which would list every field with the arrays (tens of kB at
        d = 64): the fields but the arrays, and which optional inputs exist. The arrays follow from
        ``seed``, the shapes and those (``make_inputs``)."""
        optional = [key for key in ("log_gate", "rotary", "proportions") if key in self.inputs]
        printer.text(f"{self!r} with inputs q, k, v{''.join(', ' + key for key in optional)}")

    @property
    def options(self) -> dict[str, Any]:
        """The keyword options of ``sympow.attention`` other than arrays and form."""
        return {
            "kernel": self.kernel,
            "power": self.power,
            "scale": self.scale,
            "normalize": self.normalize,
            "eps": self.eps,
            "rotary_layout": self.rotary_layout,
        }

    def arrays(self, xp: Any, dtype: str | None = None) -> dict[str, Any]:
        return convert(self.inputs, xp, dtype or self.dtype)

    def call(
        self,
        attention: Callable[..., Any],
        xp: Any,
        *,
        dtype: str | None = None,
        inputs: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Any:
        """attention(q, k, v, ...) on this case's inputs (or ``inputs``) converted to ``xp``."""
        arrays = convert(self.inputs if inputs is None else inputs, xp, dtype or self.dtype)
        kwargs = {
            **self.options,
            "chunk_size": self.chunk_size,
            "log_gate": arrays.get("log_gate"),
            "proportions": arrays.get("proportions"),
            "rotary": arrays.get("rotary"),
        }
        kwargs.update(overrides)
        return attention(arrays["q"], arrays["k"], arrays["v"], **kwargs)

    def with_inputs(self, **changes: Any) -> AttentionCase:
        return replace(self, inputs={**self.inputs, **changes})

    def condition(self, **overrides: Any) -> Any:
        """The state-path condition number c_i [*batch, T] of math.md 9 on this case's inputs (float64)."""
        import numpy

        from .condition import condition_numbers

        return self.call(condition_numbers, numpy, dtype="float64", **overrides)

    def assert_matches(
        self,
        y: Any,
        y_ref: Any,
        *,
        state_path: bool = True,
        dtype: str | None = None,
        state_dtype: str | None = None,
        inputs: dict[str, Any] | None = None,
        what: str = "",
        **overrides: Any,
    ) -> None:
        """Raise AssertionError unless y (computed on this case, or on ``inputs`` with ``overrides`` of
        the options) lies within the contract's tolerance of the float64 y_ref (math.md 9), row by row:
        tol_i = max(tau, gamma u_state c_i / (1 - u_state c_i)) (``tolerances.row_tolerances``), tau
        the table's for ``dtype`` (default: the case's), u_state the unit round-off of the state dtype
        (``state_dtype``, default the contract's for that dtype and the kernel's degree) and c_i the
        row's condition number over every key up to i (``condition``), a bound for any form and any
        split into resumed calls. So every row with gamma u_state c_i <= tau, every row of a
        well-conditioned problem, is held to the table; only rows whose state path cannot do better
        get more. ``state_path=False`` (the parallel form of one call: no state path) holds every
        row to tau alone."""
        from .tolerances import assert_close, assert_close_rows, contract_state_dtype

        source = self.inputs if inputs is None else inputs
        dtype_name = self.dtype if dtype is None else dtype
        normalize = overrides.get("normalize", self.normalize)
        if not state_path:
            assert_close(y, y_ref, source["v"], dtype_name=dtype_name, normalize=normalize, what=what)
            return
        kernel, power = overrides.get("kernel", self.kernel), overrides.get("power", self.power)
        degree = power if kernel in ("sympow", "taylor") else 1
        state = contract_state_dtype(dtype_name, highest_degree=degree, state_dtype=state_dtype)
        assert_close_rows(
            y, y_ref, source["v"], dtype_name=dtype_name, normalize=normalize,
            condition=self.condition(inputs=source, **overrides), state_dtype_name=state, what=what,
        )  # fmt: skip


def case_id(batch: Sequence[int], T: int, d: int) -> str:
    """Readable id: B{batch}-T{T}-D{d}, batch as 2x3 (or 0 for none)."""
    b = "x".join(str(n) for n in batch) or "0"
    return f"B{b}-T{T}-D{d}"


def _flag(draw: Any, value: bool | None, weights: Mapping[bool, int] | None = None) -> bool:
    """``value``, or when it is None a draw: even odds, or by ``weights``."""
    if value is not None:
        return value
    return draw(st.booleans() if weights is None else weighted(weights))


@st.composite
def attention_cases(
    draw: Any,
    *,
    kernels: Sequence[str] = KERNELS,
    dtypes: Sequence[str] = DTYPES,
    min_T: int = 1,
    max_T: int = 200,
    min_d: int = 2,
    max_d: int = 64,
    max_e: int = 8,
    min_p: int = 1,
    max_p: int = 6,
    max_batch_axes: int = 2,
    max_features: int = 2080,
    normalize: bool | None = None,
    gate: bool | None = None,
    rotary: bool | None = None,
    proportions: bool | None = None,
    scale: bool | None = None,
    eps: bool | None = None,
    even_power: bool | None = None,
    gate_min: float = -1.0,
    q_scale: float = 1.0,
) -> AttentionCase:
    """A seeded attention problem.

    Flags left as None are drawn (gates and rotary two times in three, by ``FEATURE_WEIGHTS``).
    The kernel is drawn from ``kernels`` by ``KERNEL_WEIGHTS``, p in min_p..max_p by ``POWER_WEIGHTS``,
    T and d from their bands (``seq_lengths``, ``head_dims``).
    ``normalize=True`` restricts the kernel and power to those that allow it (even sympow powers,
    relu); ``normalize=None`` draws it where allowed, by ``NORMALIZE_WEIGHTS``. ``scale`` and
    ``eps`` say whether an explicit scale in [0.1, 1.5] and a positive eps (normalised only)
    are used.
    ``max_features`` caps the kernel's feature size by shrinking d, so that feature forms stay fast
    (every d and p remain reachable, just not all together: the default 2080 is sympow p = 2 at
    d = 64, and holds p = 4 to d <= 13).
    """
    order = sorted(kernels, key=lambda name: -KERNEL_WEIGHTS.get(name, 1))
    kernel = draw(weighted({name: KERNEL_WEIGHTS.get(name, 1) for name in order}))
    if normalize is True and kernel in ("taylor", "identity"):
        kernel = "sympow"
    if kernel in ("sympow", "taylor"):
        want_even = even_power
        if normalize is True and kernel == "sympow":
            want_even = True
        power = draw(powers(min_p=min_p, max_p=max_p, even=want_even))
    else:
        power = 1
    use_rotary = _flag(draw, rotary, FEATURE_WEIGHTS["rotary"])
    T = draw(seq_lengths(min_T=min_T, max_T=max_T))
    d = draw(head_dims(min_d=min_d, max_d=max_d, even=use_rotary))
    step = 2 if use_rotary else 1
    while d - step >= min_d and feature_size(kernel, d, power) > max_features:
        d -= step
    e = draw(value_dims(max_e=max_e))
    batch = draw(batch_shapes(max_axes=max_batch_axes))
    norm = normalize if normalize is not None else False
    if normalize is None and normalizable(kernel, power):
        norm = draw(weighted(NORMALIZE_WEIGHTS))
    scale_value = draw(st.floats(0.1, 1.5)) if _flag(draw, scale) else None
    eps_value = 0.0
    if norm and _flag(draw, eps):
        eps_value = draw(st.sampled_from([1e-6, 1e-3, 0.5]))
    layout = draw(st.sampled_from(LAYOUTS))
    chunk = draw(chunk_sizes(T))
    dtype = draw(st.sampled_from(list(dtypes)))
    seed = draw(seeds())
    inputs = make_inputs(
        batch=batch,
        T=T,
        d=d,
        e=e,
        seed=seed,
        gate=_flag(draw, gate, FEATURE_WEIGHTS["gate"]),
        gate_min=gate_min,
        rotary=use_rotary,
        proportions=_flag(draw, proportions, FEATURE_WEIGHTS["proportions"]),
        q_scale=q_scale,
        dtype=dtype,
    )
    return AttentionCase(
        inputs=inputs,
        batch=batch,
        T=T,
        d=d,
        e=e,
        seed=seed,
        kernel=kernel,
        power=power,
        normalize=norm,
        scale=scale_value,
        eps=eps_value,
        rotary_layout=layout,
        chunk_size=chunk,
        dtype=dtype,
    )


def nearly_orthogonal_inputs(
    *,
    batch: tuple[int, ...] = (),
    T: int,
    d: int,
    e: int,
    p: int,
    r: int,
    key_rank: int = 1,
    seed: int = 0,
    gate: bool = False,
    proportions: bool = False,
    dtype: str = "float64",
) -> dict[str, Any]:
    """Seeded inputs whose every query is nearly orthogonal to every key (math.md 9's bad case).

    With U a random orthonormal basis of R^d, u = U[:, 0] and K = span U[:, :key_rank]:

        k_j = alpha_j (u + beta_j w_j),   alpha_j ~ N(0, 1), w_j a unit vector of K orthogonal to u,
                                          beta_j uniform in [0, 1/2]
        q_i = x_i + s_i eps_i |x_i| u,    x_i ~ N(0, I) projected onto the complement of K, s_i = +-1,
                                          eps_i = 10^(-2 rho_i / p), rho_i uniform in [0, r]

    so every term of row i has |q~_i| |k~_j| / |q~_i . k~_j| = ((1 + eps_i^2)(1 + beta_j^2))^{1/2} / eps_i
    and the state-path condition number (sympow p, no rotary) lies between eps_i^-p (1 + eps_i^2)^{p/2}
    and that times 1.25^{p/2}: about 10^{2 rho_i}, at most 1.6e8 for r = 4, whatever the gates,
    proportions and scale (they weight the numerator and Z alike). Rotary would rotate the queries out
    of the complement of K, so there is none. v ~ N(0, I); log_gate uniform in [-1, 0]; proportions
    uniform in [0, 1]; arrays drawn in float64 and rounded to ``dtype``.
    """
    if not 1 <= key_rank < d:
        raise ValueError(f"key_rank must lie in 1..d-1 = {d - 1}, got {key_rank}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    u, rest, complement = basis[:, 0], basis[:, 1:key_rank], basis[:, key_rank:]
    x = rng.standard_normal((*batch, T, d - key_rank)) @ complement.T
    rho = r * rng.random((*batch, T, 1))
    sign = rng.choice([-1.0, 1.0], size=(*batch, T, 1))
    q = x + sign * 10.0 ** (-2.0 * rho / p) * np.linalg.norm(x, axis=-1, keepdims=True) * u
    side = rng.standard_normal((*batch, T, key_rank - 1)) @ rest.T
    norms = np.linalg.norm(side, axis=-1, keepdims=True)
    side = np.where(norms > 0, side / np.where(norms > 0, norms, 1.0), 0.0)
    beta = 0.5 * rng.random((*batch, T, 1))
    k = rng.standard_normal((*batch, T, 1)) * (u + beta * side)
    out: dict[str, Any] = {"q": q, "k": k, "v": rng.standard_normal((*batch, T, e))}
    if gate:
        out["log_gate"] = -rng.random((*batch, T))
    if proportions:
        out["proportions"] = (rng.random((*batch, T)), rng.random((*batch, T)))
    np_dtype = np.dtype(dtype)
    return {
        key: tuple(np.asarray(a, dtype=np_dtype) for a in value)
        if isinstance(value, tuple)
        else np.asarray(value, dtype=np_dtype)
        for key, value in out.items()
    }


@st.composite
def nearly_orthogonal_cases(
    draw: Any,
    *,
    power_choices: Sequence[int] = (2, 4),
    dtypes: Sequence[str] = DTYPES,
    min_T: int = 1,
    max_T: int = 48,
    min_d: int = 4,
    max_d: int = 16,
    max_e: int = 4,
    max_r: int = 4,
    max_batch_axes: int = 1,
    gate: bool | None = None,
    proportions: bool | None = False,
    scale: bool | None = None,
) -> AttentionCase:
    """Normalised sympow problems (p from ``power_choices``) whose queries are nearly orthogonal to every
    key, built by ``nearly_orthogonal_inputs``: the state-path condition number of row i is about
    10^{2 rho_i}, rho_i in [0, r] and r drawn from 0..max_r, so up to about 1e8 (1.6e8 at most).

    T in min_T..max_T, d in min_d..max_d, e in 1..max_e, the keys' span of dimension 1..min(3, d // 2),
    0..max_batch_axes batch axes of size 1..2, optional gates (and proportions), eps = 0 and no rotary
    (it would destroy the construction). Returns an ``AttentionCase`` like ``attention_cases``.
    """
    power = draw(st.sampled_from(list(power_choices)))
    T = draw(seq_lengths(min_T=min_T, max_T=max_T))
    d = draw(st.integers(max(min_d, 2), max_d))
    e = draw(value_dims(max_e=max_e))
    batch = draw(batch_shapes(max_axes=max_batch_axes, max_size=2))
    key_rank = draw(st.integers(1, max(1, min(3, d // 2))))
    r = draw(st.integers(0, max_r))
    scale_value = draw(st.floats(0.1, 1.5)) if _flag(draw, scale) else None
    chunk = draw(chunk_sizes(T))
    dtype = draw(st.sampled_from(list(dtypes)))
    seed = draw(seeds())
    inputs = nearly_orthogonal_inputs(
        batch=batch, T=T, d=d, e=e, p=power, r=r, key_rank=key_rank, seed=seed,
        gate=_flag(draw, gate), proportions=_flag(draw, proportions), dtype=dtype,
    )  # fmt: skip
    return AttentionCase(
        inputs=inputs, batch=batch, T=T, d=d, e=e, seed=seed, kernel="sympow", power=power,
        normalize=True, scale=scale_value, eps=0.0, rotary_layout="half", chunk_size=chunk, dtype=dtype,
    )  # fmt: skip


# Eager JAX compiles every primitive for every new shape (about a second per attention call on
# fresh shapes), so property tests run fewer examples there: this fraction of the profile's count.
SLOW_NAMESPACES = {"jax.numpy": 5, "jax": 5}


def namespace_settings(xp: Any) -> settings:
    """Settings of the loaded profile, with the example count divided by SLOW_NAMESPACES[xp]
    (at least 3) for namespaces that are slow on fresh shapes."""
    name = getattr(xp, "__name__", str(xp))
    divisor = SLOW_NAMESPACES.get(name)
    if divisor is None:
        return settings()
    return settings(max_examples=max(3, settings.default.max_examples // divisor))


_PROPERTY_SEED: ContextVar[int | None] = ContextVar("sympow_property_seed", default=None)


@contextmanager
def seeded_properties(value: int | None) -> Iterator[None]:
    """Inside the block, every property built by ``given_for`` draws from ``hypothesis.seed(value)``
    (None: Hypothesis's own choice). A derandomised run draws the same cases for one property
    source wherever it runs; a test suite that runs one ``given_for`` property under several
    parametrisations uses this, with a seed per parametrisation (tests/conftest.py: the CRC-32 of the
    pytest node id), so that each draws its own cases, still the same ones on every run."""
    token = _PROPERTY_SEED.set(value)
    try:
        yield
    finally:
        _PROPERTY_SEED.reset(token)


def given_for(xp: Any, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@given(...)`` with ``namespace_settings(xp)``, for a property checked inside a test that
    receives the namespace as a fixture, seeded as ``seeded_properties`` says:

        def test_something(xp):
            @given_for(xp, case=attention_cases())
            def check(case): ...
            check()
    """

    def decorate(fn: Callable[..., Any]) -> Any:
        test = namespace_settings(xp)(given(*args, **kwargs)(fn))
        value = _PROPERTY_SEED.get()
        return test if value is None else seed(value)(test)

    return decorate


OFFSET_KINDS = ("random", "one sequence", "every token", "chunk edges", "off chunk edges")


@st.composite
def packed_offsets(draw: Any, T: int, chunk_size: int) -> list[int]:
    """Offsets 0 = o_0 <= ... <= o_N = T of packed sequences (math.md 10), of one of ``OFFSET_KINDS``:
    random cuts (empty sequences included, N up to T + 3), one sequence, T sequences of one token,
    boundaries on chunk edges (multiples of ``chunk_size``), or one token off them."""
    kind = draw(st.sampled_from(OFFSET_KINDS), label="offsets kind")
    if kind == "one sequence":
        return [0, T]
    if kind == "every token":
        return list(range(T + 1))
    if kind in ("chunk edges", "off chunk edges"):
        shift = 0 if kind == "chunk edges" else draw(st.sampled_from([-1, 1]))
        edges = [c + shift for c in range(chunk_size, T, chunk_size)]
        cuts = draw(st.lists(st.sampled_from(edges), max_size=len(edges))) if edges else []
        cuts = [min(max(c, 0), T) for c in cuts]
    else:
        cuts = draw(st.lists(st.integers(0, T), max_size=T + 2))
    return [0, *sorted(cuts), T]
