"""Hostile inputs: calls of ``sympow.attention`` that must be refused, a Hypothesis strategy (public).

api.md: bad input raises ``ValueError`` or ``TypeError`` whose message names the argument, and nothing
is computed on it. ``hostile_calls(xp)`` draws a small valid call on the namespace ``xp`` and then one
corruption from ``CATALOGUE``; the result, a ``HostileCall``, unpacks as ``(kwargs, argument, error)``:
the keyword arguments of ``sympow.attention`` (q, k and v among them), the name the error message must
contain and the exception class it must be. ``assert_refused`` makes the call with every backend's
``run`` replaced by a tripwire, so that an error raised after computing started (or none at all) fails.

The catalogue, by kind (each entry says which argument is corrupted and how):

- ranks: q, k, v with one axis; log_gate and proportions with none; rotary with one; State fields short;
- shapes: T, d or e that disagree, zero tokens, leading (batch) axes that do not broadcast, rotary on an
  odd d, State fields of the wrong length, proportions that are not a pair;
- dtypes: int, bool and complex arrays, float dtypes mixed within q, k, v, extended precision (NumPy's
  longdouble), 8-bit floats (torch, JAX);
- libraries: an array of another library among the call's, plain lists and numbers; NumPy masked arrays
  and matrices; torch's meta device and sparse layouts;
- values: NaN, +inf and -inf in q, k, v, rotary and each State field (log_scale = -inf is an empty state,
  which is valid: only NaN and +inf are planted there); positive, NaN and +inf log-gates; proportions
  below 0, above 1 or NaN;
- options: power (0, -1, 1.5, True, "2", None, too large for its dtype, for taylor's coefficients or for
  the feature-size limits; anything but the default for relu and identity), kernel, scale, eps
  (negative, NaN, inf, a string; positive without normalisation), form, chunk_size, rotary_layout,
  normalize, return_state, state_dtype, backend; initial_state that is not a State, or a State made by
  another kernel of the same feature size (relu and identity; sympow p = 2 and taylor p = 1 at d = 2).

Sizes stay small (T <= 4, d <= 4, e <= 3, batch of at most 2), so that a refused call costs only its
checks; calls that pass them would compute, which ``assert_refused`` reports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
from hypothesis import strategies as st

from ..spec.kernel import make_kernel
from ..spec.rotary import has_float64
from ..spec.state import Producer, State, state_type


@dataclass(frozen=True)
class HostileCall:
    """A call that must be refused: ``attention(**kwargs)`` raises ``error`` naming ``argument``.

    Unpacks as ``(kwargs, argument, error)``; ``label`` names the corruption (for reports)."""

    kwargs: dict[str, Any]
    argument: str
    error: type[Exception]
    label: str = ""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kwargs, self.argument, self.error))

    def __repr__(self) -> str:
        arrays = {key: _describe(value) for key, value in self.kwargs.items()}
        return f"HostileCall({self.label!r}: {self.error.__name__} naming {self.argument!r}; {arrays})"


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__module__.split('.')[0]}{tuple(value.shape)} {value.dtype}"
    if isinstance(value, tuple):
        return f"{type(value).__name__}({', '.join(_describe(item) for item in value)})"
    return repr(value)


def library_of(xp: Any) -> str:
    """The library of a namespace module: "numpy", "torch", "jax", "array_api_strict", ..."""
    name = getattr(xp, "__name__", type(xp).__name__)
    return name.removeprefix("array_api_compat.").split(".")[0]


@dataclass
class Call:
    """A valid call under construction, held as NumPy float64 values plus options; ``kwargs()`` makes
    the arrays of ``xp``. A corruption edits ``raw`` (values and shapes), ``options`` or ``overrides``
    (objects put in place of an argument as they are: another library's array, a list, a tensor on the
    meta device)."""

    xp: Any
    dtype: str
    batch: tuple[int, ...]
    T: int
    d: int
    e: int
    raw: dict[str, Any]  # q, k, v, log_gate, rotary, proportions (a pair), S, z, mu, log_scale
    options: dict[str, Any]
    state_class: type[State] = State
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def library(self) -> str:
        return library_of(self.xp)

    def array(self, values: Any, dtype: str | None = None) -> Any:
        """``values`` as an array of ``xp`` of ``dtype`` (the call's float dtype by default)."""
        values = np.asarray(values)
        dtype = self.dtype if dtype is None else dtype
        if self.library == "torch":
            import torch

            return torch.asarray(values.copy(), dtype=getattr(torch, dtype))
        return self.xp.asarray(values, dtype=getattr(self.xp, dtype))

    def argument(self, name: str) -> Any:
        """The argument ``name`` (q, k, v, log_gate, rotary, proportions[0], proportions[1],
        initial_state.<field>) as an array of ``xp``, unless overridden."""
        if name in self.overrides:
            return self.overrides[name]
        if name.startswith("proportions["):
            values = self.raw["proportions"][int(name[12])]
        else:
            values = self.raw.get(name.removeprefix("initial_state."))
        return None if values is None else self.array(values)

    def kwargs(self) -> dict[str, Any]:
        kwargs = {name: self.argument(name) for name in ("q", "k", "v", "log_gate", "rotary")}
        if "proportions" in self.overrides:
            kwargs["proportions"] = self.overrides["proportions"]
        elif self.raw.get("proportions") is not None:
            kwargs["proportions"] = (self.argument("proportions[0]"), self.argument("proportions[1]"))
        if "initial_state" in self.overrides:
            kwargs["initial_state"] = self.overrides["initial_state"]
        elif self.raw.get("S") is not None:
            fields = {f: self.argument(f"initial_state.{f}") for f in ("S", "z", "mu", "log_scale")}
            kwargs["initial_state"] = self.state_class(**fields)
        return {**{key: value for key, value in kwargs.items() if value is not None}, **self.options}


@dataclass(frozen=True)
class Corruption:
    """One entry of the catalogue: ``apply(draw, call)`` corrupts ``argument``; ``base`` fixes what the
    valid call must have (gate, rotary, proportions, state: True; batch, d, kernel, normalize, dtype:
    a value); ``libraries`` limits the entry to those (None: every library)."""

    label: str
    argument: str
    error: type[Exception]
    apply: Callable[[Any, Call], None]
    base: dict[str, Any] = field(default_factory=dict)
    libraries: tuple[str, ...] | None = None


# --- helpers that corrupt one argument -------------------------------------------------------------


def _needs(argument: str) -> dict[str, Any]:
    """The base a corruption of ``argument`` needs: that optional argument present."""
    if argument == "log_gate":
        return {"gate": True}
    if argument == "rotary":
        return {"rotary": True}
    if argument.startswith("proportions"):
        return {"proportions": True}
    if argument == "initial_state.mu":
        return {"state": True, "rotary": True}
    if argument.startswith("initial_state"):
        return {"state": True}
    return {}


def _key(argument: str) -> str:
    return argument.removeprefix("initial_state.")


def _get(call: Call, argument: str) -> np.ndarray:
    if argument.startswith("proportions["):
        return call.raw["proportions"][int(argument[12])]
    return call.raw[_key(argument)]


def _set(call: Call, argument: str, values: np.ndarray) -> None:
    if argument.startswith("proportions["):
        pair = list(call.raw["proportions"])
        pair[int(argument[12])] = values
        call.raw["proportions"] = tuple(pair)
    else:
        call.raw[_key(argument)] = values


def _plant(value: float) -> Callable[[Any, Call], None]:
    """Put ``value`` at one drawn entry of the argument (which ``apply`` receives through a closure)."""

    def make(argument: str) -> Callable[[Any, Call], None]:
        def apply(draw: Any, call: Call) -> None:
            values = np.array(_get(call, argument), dtype=np.float64, copy=True)
            if values.size:
                values.reshape(-1)[draw(st.integers(0, values.size - 1))] = value
            _set(call, argument, values)

        return apply

    return make


def _reshape(shape_of: Callable[[Call, tuple[int, ...]], tuple[int, ...]]) -> Callable[[str], Any]:
    """Replace the argument by standard-normal values of ``shape_of(call, its shape)``."""

    def make(argument: str) -> Callable[[Any, Call], None]:
        def apply(draw: Any, call: Call) -> None:
            shape = shape_of(call, np.shape(_get(call, argument)))
            values = np.random.default_rng(0).standard_normal(shape)
            if argument == "log_gate":
                values = -np.abs(values)
            if argument.startswith("proportions"):
                values = np.abs(np.tanh(values))
            _set(call, argument, values)

        return apply

    return make


def _as_dtype(dtype: str) -> Callable[[str], Any]:
    """Replace the argument by its values in ``dtype`` (int, bool, complex: of the library)."""

    def make(argument: str) -> Callable[[Any, Call], None]:
        def apply(draw: Any, call: Call) -> None:
            values = np.asarray(_get(call, argument))
            if dtype == "bool":
                values = values > 0
            elif dtype.startswith("int"):
                values = np.round(3 * np.nan_to_num(values, neginf=-1.0))
            call.overrides[argument] = call.array(values.astype(dtype), dtype)

        return apply

    return make


def _override(make_value: Callable[[Any, Call, np.ndarray], Any]) -> Callable[[str], Any]:
    """Put ``make_value(draw, call, values)`` in place of the argument, as it is."""

    def make(argument: str) -> Callable[[Any, Call], None]:
        def apply(draw: Any, call: Call) -> None:
            call.overrides[argument] = make_value(draw, call, np.asarray(_get(call, argument)))

        return apply

    return make


def _option(name: str, value: Any) -> Callable[[Any, Call], None]:
    def apply(draw: Any, call: Call) -> None:
        call.options[name] = value

    return apply


def _foreign(call: Call, values: np.ndarray) -> Any:
    """``values`` as an array of another library than the call's (NumPy, else array-api-strict or
    torch), or None where none imports."""
    if call.library != "numpy":
        return np.asarray(values, dtype=call.dtype)
    for name in ("array_api_strict", "torch"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        if name == "torch":
            return module.asarray(values.copy(), dtype=getattr(module, call.dtype))
        return module.asarray(values, dtype=getattr(module, call.dtype))
    return None


def _torch_dtype(call: Call, values: np.ndarray, dtype: str) -> Any:
    import torch

    return torch.asarray(values.copy(), dtype=torch.float32).to(getattr(torch, dtype))


def _float8(draw: Any, call: Call, values: np.ndarray) -> Any:
    if call.library == "torch":
        return _torch_dtype(call, values, "float8_e4m3fn")
    return call.xp.asarray(values.astype(np.float32), dtype=call.xp.float8_e4m3fn)


def _meta(draw: Any, call: Call, values: np.ndarray) -> Any:
    return call.array(values).to("meta")


def _sparse(draw: Any, call: Call, values: np.ndarray) -> Any:
    dense = call.array(values)
    if dense.ndim == 2 and draw(st.booleans()):
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return dense.to_sparse_csr()
    return dense.to_sparse()


def _other_float(call: Call) -> str:
    if call.dtype == "float32" and hasattr(call.xp, "float16"):
        return "float16"
    return "float64" if call.dtype == "float32" else "float32"


def _mixed_float(argument: str) -> Callable[[Any, Call], None]:
    def apply(draw: Any, call: Call) -> None:
        other = _other_float(call)
        call.overrides[argument] = call.array(_get(call, argument), other)

    return apply


def _producer_state(kernel: str, power: int) -> Callable[[Any, Call], None]:
    """The call's State, recorded as made by ``kernel`` (power ``power``) with the call's halves: same
    sizes, other sums."""

    def apply(draw: Any, call: Call) -> None:
        halves = 1 if call.raw.get("proportions") is None else 2
        call.state_class = state_type(Producer(make_kernel(kernel, power), halves))

    return apply


def _state_of_shape(field_name: str, delta: int) -> Callable[[Any, Call], None]:
    def apply(draw: Any, call: Call) -> None:
        values = call.raw[field_name]
        shape = list(values.shape)
        axis = {"S": -2, "z": -1, "mu": -1}[field_name]
        shape[axis] += delta
        call.raw[field_name] = np.random.default_rng(1).standard_normal(shape)

    return apply


def _not_a_state(draw: Any, call: Call) -> None:
    state = call.kwargs()["initial_state"]
    call.overrides["initial_state"] = draw(st.sampled_from([tuple(state), dict(state._asdict()), "state"]))


def _proportions_not_a_pair(draw: Any, call: Call) -> None:
    a, b = call.argument("proportions[0]"), call.argument("proportions[1]")
    call.overrides["proportions"] = draw(st.sampled_from([a, (a,), (a, b, a), [a]]))


# --- the catalogue ---------------------------------------------------------------------------------

STATE_FIELDS = ("initial_state.S", "initial_state.z", "initial_state.mu", "initial_state.log_scale")


def _entries() -> list[Corruption]:
    entries: list[Corruption] = []

    def add(label: str, argument: str, error: type[Exception], apply: Any, **base: Any) -> None:
        libraries = base.pop("libraries", None)
        entries.append(Corruption(label, argument, error, apply, {**_needs(argument), **base}, libraries))

    # ranks
    rank_of = {"q": 1, "k": 1, "v": 1, "log_gate": 0, "rotary": 1, "proportions[0]": 0,
               "proportions[1]": 0, "initial_state.S": 1, "initial_state.z": 0}  # fmt: skip
    for argument, ndim in rank_of.items():
        add(f"{argument} with {ndim} axes", argument, ValueError,
            _reshape(lambda call, shape, ndim=ndim: shape[len(shape) - ndim :])(argument))  # fmt: skip
    # shapes
    add("k with T + 1 tokens", "k", ValueError, _reshape(lambda c, s: (*s[:-2], s[-2] + 1, s[-1]))("k"))
    add("v with T + 1 tokens", "v", ValueError, _reshape(lambda c, s: (*s[:-2], s[-2] + 1, s[-1]))("v"))
    add("k with d + 1 features", "k", ValueError, _reshape(lambda c, s: (*s[:-1], s[-1] + 1))("k"))
    add("v with e = 0", "v", ValueError, _reshape(lambda c, s: (*s[:-1], 0))("v"))
    add("q, k, v with T = 0", "q", ValueError, _zero_tokens)
    for argument in ("log_gate", "proportions[1]"):
        add(f"{argument} with T + 1 entries", argument, ValueError,
            _reshape(lambda c, s: (*s[:-1], s[-1] + 1))(argument))  # fmt: skip
    add("rotary with T + 1 tokens", "rotary", ValueError,
        _reshape(lambda c, s: (*s[:-2], s[-2] + 1, s[-1]))("rotary"))  # fmt: skip
    add("rotary with d/2 + 1 angles", "rotary", ValueError,
        _reshape(lambda c, s: (*s[:-1], s[-1] + 1))("rotary"))  # fmt: skip
    add("rotary on an odd d", "rotary", ValueError,
        lambda draw, call: call.raw.update(rotary=np.zeros((*call.batch, call.T, call.d // 2))),
        d="odd", rotary=False)  # fmt: skip
    tails = {"k": 2, "v": 2, "log_gate": 1, "rotary": 2, "proportions[0]": 1, "initial_state.log_scale": 0}
    for argument, tail in tails.items():
        add(f"{argument} with batch (3,) against (2,)", argument, ValueError,
            _reshape(lambda c, s, tail=tail: (3, *s[len(s) - tail :]))(argument), batch=(2,))  # fmt: skip
    for field_name, delta in (("S", 1), ("S", -1), ("z", 1), ("mu", 1)):
        add(f"initial_state.{field_name} of length {delta:+d}", f"initial_state.{field_name}", ValueError,
            _state_of_shape(field_name, delta))  # fmt: skip
    add("a State without the halves of proportions", "initial_state", ValueError,
        lambda draw, call: call.raw.update(proportions=(np.full(call.T, 0.5), np.full(call.T, 0.5))),
        state=True, proportions=False)  # fmt: skip
    add("proportions not a pair", "proportions", TypeError, _proportions_not_a_pair, proportions=True)
    # dtypes
    for argument, dtype in (("q", "int64"), ("k", "int32"), ("v", "bool"), ("q", "bool"),
                            ("log_gate", "int64"), ("rotary", "int64"), ("proportions[0]", "bool"),
                            ("initial_state.S", "int64"), ("initial_state.log_scale", "int64")):  # fmt: skip
        add(f"{argument} of dtype {dtype}", argument, TypeError, _as_dtype(dtype)(argument))
    for argument in ("k", "rotary"):
        add(f"{argument} of dtype complex128", argument, TypeError, _as_dtype("complex128")(argument),
            dtype="float64")  # fmt: skip
    for argument in ("k", "v"):
        add(f"{argument} of another float dtype than q", argument, TypeError, _mixed_float(argument))
    for argument in ("q", "v", "rotary", "initial_state.z"):
        add(f"{argument} in longdouble", argument, TypeError,
            _override(lambda draw, call, x: np.asarray(x, dtype=np.longdouble))(argument),
            libraries=("numpy",))  # fmt: skip
    for argument in ("q", "k", "log_gate", "initial_state.S"):
        add(f"{argument} in float8", argument, TypeError, _override(_float8)(argument),
            libraries=("torch", "jax"))  # fmt: skip
    # libraries and kinds of array
    for argument in ("k", "v", "log_gate", "rotary", "proportions[1]", "initial_state.S", "initial_state.mu"):
        add(f"{argument} of another library", argument, TypeError,
            _override(lambda draw, call, x: _foreign(call, x))(argument))  # fmt: skip
    add("q as a list", "q", TypeError, _override(lambda draw, call, x: x.tolist())("q"))
    add("k as a number", "k", TypeError, _override(lambda draw, call, x: 1.0)("k"))
    add("log_gate as a list", "log_gate", TypeError, _override(lambda draw, call, x: x.tolist())("log_gate"))
    for argument in ("q", "k", "v", "log_gate", "rotary", "proportions[0]", *STATE_FIELDS):
        add(f"{argument} on the meta device", argument, ValueError, _override(_meta)(argument),
            libraries=("torch",))  # fmt: skip
    for argument in ("q", "k", "v", "log_gate", "rotary", "proportions[1]", "initial_state.S"):
        add(f"{argument} sparse", argument, TypeError, _override(_sparse)(argument), libraries=("torch",))
    masked = _override(lambda draw, call, x: np.ma.masked_array(x, mask=x > 1))
    add("q a masked array", "q", TypeError, masked("q"), libraries=("numpy",))
    add("k a matrix", "k", TypeError, _matrix_k, libraries=("numpy",), batch=())
    # values
    for value in (math.nan, math.inf, -math.inf):
        for argument in ("q", "k", "v", "rotary", "initial_state.S", "initial_state.z", "initial_state.mu"):
            add(f"{value} in {argument}", argument, ValueError, _plant(value)(argument))
    for value in (math.nan, math.inf):
        add(f"{value} in initial_state.log_scale", "initial_state.log_scale", ValueError,
            _plant(value)("initial_state.log_scale"))  # fmt: skip
    for value in (0.5, math.nan, math.inf):
        add(f"log_gate {value}", "log_gate", ValueError, _plant(value)("log_gate"))
    for value in (-0.1, 1.5, math.nan):
        for argument in ("proportions[0]", "proportions[1]"):
            add(f"{argument} {value}", argument, ValueError, _plant(value)(argument))
    # options
    for value, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                         ("2", TypeError), (None, TypeError), (2**60, ValueError)):  # fmt: skip
        add(f"power={value!r}", "power", error, _option("power", value))
    add("taylor power=171", "power", ValueError, _option("power", 171), kernel="taylor", normalize=False)
    add("taylor power=10**4", "power", ValueError, _option("power", 10**4), kernel="taylor", normalize=False)
    add("power=10**6 at d = 6 (D' ~ 8e27 > 2^63)", "power", ValueError, _option("power", 10**6), d=6)
    add("power=10**4 at d = 4, building arrays of D' ~ 1.7e11 rows", "power", ValueError, _budget,
        d=4, state=False)  # fmt: skip
    for kernel, normalize in (("relu", True), ("identity", False)):
        for value, error in ((3, ValueError), (0, ValueError), ("2", TypeError), (None, TypeError),
                             (2.0, TypeError)):  # fmt: skip
            add(f"{kernel} with power={value!r}", "power", error, _option("power", value),
                kernel=kernel, normalize=normalize)  # fmt: skip
    for value in ("softmax", None, 3, "Sympow"):
        add(f"kernel={value!r}", "kernel", ValueError, _option("kernel", value))
    for value, error in ((0, ValueError), (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                         ("x", TypeError), (True, TypeError)):  # fmt: skip
        add(f"scale={value!r}", "scale", error, _option("scale", value))
    for value, error in ((-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                         ("0", TypeError)):  # fmt: skip
        add(f"eps={value!r}", "eps", error, _option("eps", value))
    add("eps > 0 with normalize=False", "eps", ValueError, _option("eps", 0.5), normalize=False)
    for value in ("x", "Parallel", None):
        add(f"form={value!r}", "form", ValueError, _option("form", value))
    for value, error in ((0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)):
        add(f"chunk_size={value!r}", "chunk_size", error, _option("chunk_size", value))
    add("rotary_layout='x'", "rotary_layout", ValueError, _option("rotary_layout", "x"))
    for value in (1, "yes", 0.0, None):
        add(f"normalize={value!r}", "normalize", TypeError, _option("normalize", value))
    for value in ("yes", 1):
        add(f"return_state={value!r}", "return_state", TypeError, _option("return_state", value))
    for value in ("float16", "x", "bfloat16"):
        add(f"state_dtype={value!r}", "state_dtype", ValueError, _option("state_dtype", value))
    add("backend='nope'", "backend", ValueError, _option("backend", "nope"))
    add("backend=3", "backend", TypeError, _option("backend", 3))
    add("initial_state not a State", "initial_state", TypeError, _not_a_state, state=True)
    add("identity call, State of relu", "initial_state", ValueError, _producer_state("relu", 2),
        state=True, kernel="identity", normalize=False)  # fmt: skip
    add("relu call, State of identity", "initial_state", ValueError, _producer_state("identity", 2),
        state=True, kernel="relu")  # fmt: skip
    add("sympow p = 2 call, State of taylor p = 1 (d = 2)", "initial_state", ValueError,
        _producer_state("taylor", 1), state=True, d=2)  # fmt: skip
    return entries


def _zero_tokens(draw: Any, call: Call) -> None:
    for name in ("q", "k", "v"):
        shape = call.raw[name].shape
        call.raw[name] = np.zeros((*shape[:-2], 0, shape[-1]))


def _matrix_k(draw: Any, call: Call) -> None:
    with warnings.catch_warnings():  # np.matrix is pending deprecation
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        call.overrides["k"] = np.asmatrix(np.asarray(call.raw["k"], dtype=call.dtype))


def _budget(draw: Any, call: Call) -> None:
    call.options["power"] = 10**4
    choice = draw(st.sampled_from(["recurrent", "chunked", "return_state"]))
    if choice == "return_state":
        call.options.update(form="parallel", return_state=True)
    else:
        call.options["form"] = choice


CATALOGUE: tuple[Corruption, ...] = tuple(_entries())


def catalogue_for(library: str) -> tuple[Corruption, ...]:
    """The entries that apply to arrays of ``library``."""
    return tuple(c for c in CATALOGUE if c.libraries is None or library in c.libraries)


# --- the strategy ----------------------------------------------------------------------------------


def _feature_size(kernel: str, power: int, d: int) -> int:
    return make_kernel(kernel, power).feature_size(d)


@st.composite
def valid_calls(draw: Any, xp: Any, base: dict[str, Any] | None = None) -> Call:
    """A small valid call on ``xp`` (sympow p = 2 unless ``base`` says otherwise), the optional arrays
    drawn or fixed by ``base`` (see ``Corruption``)."""
    base = base or {}
    dtypes = ["float32", "float64"] if has_float64(xp) else ["float32"]
    dtype = base.get("dtype") if base.get("dtype") in dtypes else draw(st.sampled_from(dtypes))
    batch = base["batch"] if "batch" in base else draw(st.sampled_from([(), (1,), (2,), (2, 1)]))
    T, e = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if base.get("d") == "odd":
        d = draw(st.sampled_from([1, 3]))
    else:
        d = base.get("d") or draw(st.sampled_from([2, 4]))
    kernel = base.get("kernel", "sympow")
    power = 2 if kernel == "sympow" else 1
    normalize = base.get("normalize", True)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    raw: dict[str, Any] = {
        "q": rng.standard_normal((*batch, T, d)),
        "k": rng.standard_normal((*batch, T, d)),
        "v": rng.standard_normal((*batch, T, e)),
    }
    use = {name: base[name] if name in base else draw(st.booleans())
           for name in ("gate", "rotary", "proportions", "state")}  # fmt: skip
    if use["gate"]:
        raw["log_gate"] = -rng.random((*batch, T))
    if use["rotary"]:
        raw["rotary"] = 0.5 * rng.standard_normal((*batch, T, d // 2))
    halves = 1
    if use["proportions"]:
        raw["proportions"] = (rng.random((*batch, T)), rng.random((*batch, T)))
        halves = 2
    if use["state"]:
        size = halves * _feature_size(kernel, power, d)
        raw["S"] = rng.standard_normal((*batch, size, e))
        raw["z"] = rng.standard_normal((*batch, size))
        raw["mu"] = rng.standard_normal((*batch, d // 2)) if use["rotary"] and d % 2 == 0 else None
        raw["log_scale"] = rng.standard_normal(batch) if draw(st.booleans()) else np.full(batch, -np.inf)
    options: dict[str, Any] = {"kernel": kernel, "normalize": normalize}
    if kernel in ("sympow", "taylor"):
        options["power"] = power
    if draw(st.booleans()):
        options["form"] = draw(st.sampled_from(["parallel", "recurrent", "chunked", "auto"]))
    return Call(xp=xp, dtype=dtype, batch=batch, T=T, d=d, e=e, raw=raw, options=options)


@st.composite
def hostile_calls(draw: Any, xp: Any, corruption: Corruption | None = None) -> HostileCall:
    """A valid small call on ``xp`` with one corruption: ``corruption``, or one drawn from
    ``catalogue_for`` the library of ``xp``."""
    if corruption is None:
        corruption = draw(st.sampled_from(catalogue_for(library_of(xp))))
    call = draw(valid_calls(xp, corruption.base))
    corruption.apply(draw, call)
    if corruption.label.endswith("of another library") and call.overrides.get(corruption.argument) is None:
        call.overrides[corruption.argument] = [0.0]  # no other library imports here: a list, also refused
    return HostileCall(call.kwargs(), corruption.argument, corruption.error, corruption.label)


class ComputedError(AssertionError):
    """A hostile call reached a backend's ``run``: it was not refused before computing."""


def assert_refused(hostile: HostileCall, attention: Callable[..., Any] | None = None) -> BaseException:
    """Call ``attention(**kwargs)`` (``sympow.attention`` by default) with every backend's ``run``
    replaced by a tripwire; assert that it raises ``hostile.error`` whose message names the argument
    (as a whole word: "k" in "k must ...", not in "kernel") before any backend runs. Returns the error."""
    import re

    from .. import backends
    from ..api import attention as sympow_attention

    attention = sympow_attention if attention is None else attention
    select = backends.select

    class Tripwire:
        @staticmethod
        def run(request: Any, form: str) -> Any:
            raise ComputedError(f"{hostile!r} was not refused: a backend was asked to run it")

    def guarded(request: Any, argument: Any = None) -> Any:
        backend, _ = select(request, argument)
        return backend, Tripwire

    with mock.patch.object(backends, "select", guarded):
        try:
            attention(**hostile.kwargs)
        except ComputedError:
            raise
        except Exception as error:  # its type is what is checked
            if not isinstance(error, hostile.error):
                raise AssertionError(
                    f"{hostile!r} raised {type(error).__name__}, expected {hostile.error.__name__}: {error}"
                ) from error
            name = re.escape(hostile.argument.split("[")[0])
            if not re.search(rf"(?<![\w.]){name}(?![\w])", str(error)):
                message = f"{hostile!r}: the message does not name {hostile.argument!r}: {error}"
                raise AssertionError(message) from error
            return error
    raise AssertionError(f"{hostile!r} was not refused")
