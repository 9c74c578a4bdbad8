"""Input checks: everything is validated before anything is computed (api.md).

``validate`` turns the arguments of ``sympow.attention`` into a ``Request``, or raises ``ValueError`` /
``TypeError`` with a message that names the argument, what was expected and what was received.

Every array argument (q, k, v, log_gate, proportions, rotary and each field of initial_state) passes
``_check_array``: an array of the array API standard of q's library and device, dense, with values
(not a torch ``meta`` tensor), of a computed dtype (float16, bfloat16, float32, float64), of enough
axes. Options are checked by type and range. Since D' = H C(d+p-1, p) grows without bound in p, limits
bound what a kernel may ask for (``_check_power``, ``_check_feature_size``, ``_check_feature_budget``),
each a ValueError naming ``power``:

- ``power`` of sympow and taylor is an exact integer of the compute dtype (at most 2^24 for float32,
  2^53 for float64: it multiplies log-magnitudes there, and beyond it an odd power would be rounded to
  an even one); taylor's is at most ``kernel.MAX_TAYLOR_POWER`` = 170 (1/p! a normal float64).
- D' is the length of the State's first axis, so it is at most ``MAX_FEATURE_SIZE`` = 2^63 - 1 in every
  form; and a call that builds arrays of D' rows (the recurrent and chunked forms, "auto" where it picks
  chunked, and the parallel form when it returns or resumes a State) is refused when the largest of them
  would exceed ``MAX_FEATURE_ELEMENTS`` entries (see its comment). The parallel form without a State
  builds none, and takes any D'.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any

from array_api_compat import array_namespace, device

from .concrete import is_concrete
from .kernel import KERNELS, MAX_TAYLOR_POWER, Kernel, make_kernel
from .rotary import LAYOUTS, has_float64
from .state import FIELD_TAILS, Producer, State, state_type

FORMS = ("parallel", "recurrent", "chunked", "auto")
STATE_DTYPES = (None, "float32", "float64")
EXCHANGES = ("auto", "allgather", "scan")  # of a sequence group (``sequence``)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")  # np.longdouble (float128) is refused
ACCUMULATION_MAX_DEGREE = 4  # math.md 9: above this degree the default state path is float64
DEFAULT_POWER = 2  # the default of ``attention(power=...)``; relu and identity take only it (or 1)
MAX_EXACT_POWER = {"float32": 2**24, "float64": 2**53}  # integers exact in the compute dtype
MAX_FEATURE_SIZE = 2**63 - 1  # D' is an array axis (the State's first): an int64 length
# The budget of a call's largest array of D' rows, in entries: the state [*batch, D', e + 1], the
# features of every token [*batch, T, D'] (recurrent; parallel with a State), of one chunk
# [*batch, D', C] (chunked). 2^36 entries are 256 GiB of float32, above the memory of any one device
# today; requests beyond it are refused by name before anything is allocated (a power of 10^6, say),
# those below it get the allocator's own MemoryError where the machine has less. A module constant,
# read at each call: set ``sympow.spec.checks.MAX_FEATURE_ELEMENTS`` to change it.
MAX_FEATURE_ELEMENTS = 2**36


@dataclass(frozen=True)
class Request:
    """A validated call of ``attention``: arrays as given (not yet broadcast or cast) and options."""

    xp: Any
    q: Any
    k: Any
    v: Any
    kernel: Kernel
    scale: float
    log_gate: Any
    proportions: tuple[Any, Any] | None
    rotary: Any
    rotary_layout: str
    normalize: bool
    eps: float
    form: str
    chunk_size: int
    initial_state: State | None
    return_state: bool
    batch_shape: tuple[int, ...]
    T: int
    d: int
    e: int
    state_dtype: str
    state_class: type[State] = State  # the State subclass that records this call's producer
    values_checked: bool = True  # False where the values could not be read (``poison``)
    sequence_group: Any = None  # a JAX mesh axis name or a torch.distributed ProcessGroup (``sequence``)
    sequence_exchange: str = "auto"
    cu_seqlens: Any = None  # packed sequences: offsets [N + 1], int64 on q's device (``packed``)
    packed_starts: tuple[int, ...] | None = None  # their distinct starts, where read at validation

    @property
    def dtype(self) -> Any:
        return self.q.dtype

    @property
    def device(self) -> Any:
        return device(self.q)

    @property
    def halves(self) -> int:
        """H: 2 with proportions (cos and sin halves of the state), else 1."""
        return 1 if self.proportions is None else 2

    @property
    def feature_size(self) -> int:
        """D' = H * D, the first axis of the state's S."""
        return self.halves * self.kernel.feature_size(self.d)

    @property
    def uses_rotary(self) -> bool:
        return self.rotary is not None or (
            self.initial_state is not None and self.initial_state.mu is not None
        )

    @property
    def library(self) -> str:
        return _library(self.xp)

    @property
    def sequences(self) -> int | None:
        """N, the number of packed sequences, or None when not packed."""
        return None if self.cu_seqlens is None else self.cu_seqlens.shape[0] - 1

    ARRAYS = ("q", "k", "v", "log_gate", "proportions", "rotary", "initial_state", "cu_seqlens")

    def arrays(self) -> dict[str, Any]:
        """The array arguments (a pytree: dict of arrays, a pair, a State, or None)."""
        return {name: getattr(self, name) for name in self.ARRAYS}

    def without_arrays(self) -> Request:
        """The static part of the call (hashable): what a compiler keeps fixed while the arrays vary."""
        return replace(self, **dict.fromkeys(self.ARRAYS))

    def with_arrays(self, arrays: dict[str, Any]) -> Request:
        """This request's options on other arrays of the same shapes (tracers, for a compiler)."""
        return replace(self, **arrays)


def _library(xp: Any) -> str:
    name = getattr(xp, "__name__", type(xp).__name__)
    return name.removeprefix("array_api_compat.").split(".")[0]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def broadcast_shapes(named: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The broadcast of the given leading shapes; the error names the arguments that do not fit."""
    ndim = max([0, *(len(s) for s in named.values())])
    result = [1] * ndim
    owner = [""] * ndim
    for name, shape in named.items():
        for axis, size in enumerate(shape, start=ndim - len(shape)):
            if size == 1:
                continue
            if result[axis] not in (1, size):
                raise ValueError(
                    f"leading (batch) axes of {name} {shape} do not broadcast with those of "
                    f"{owner[axis]} (size {result[axis]} at axis {axis - ndim}); expected equal sizes "
                    "or size 1"
                )
            result[axis], owner[axis] = size, name
    return tuple(result)


def _check_number(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    bound_ok = value > 0 if positive else value >= 0
    if not math.isfinite(value) or not bound_ok:
        expected = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _namespace(name: str, x: Any) -> Any:
    """The array API namespace of ``x``; TypeError naming ``name`` for anything else.

    Refused here: Numba CUDA device arrays (``numba.cuda.to_device``; the simulator's stand-in forwards
    to a NumPy array and would pass for one, then fail on its shape), which have no array API namespace,
    so that no backend's code can run on them; and objects that are not arrays of the standard."""
    if type(x).__module__.split(".")[0] == "numba":
        raise TypeError(
            f"{name} is a Numba CUDA device array ({type(x).__name__}), which has no array API namespace; "
            "expected an array of the standard: view it without a copy as a CuPy array (cupy.asarray) or "
            "a PyTorch tensor (torch.as_tensor(x, device='cuda')), or under the simulator pass the NumPy "
            "array (x.copy_to_host())"
        )
    try:
        return array_namespace(x)
    except TypeError:
        raise TypeError(
            f"{name} must be an array of the array API standard, got {type(x).__name__}"
        ) from None


def _dtype_hint(dtype: Any) -> str:
    """Why a floating dtype outside FLOAT_DTYPES is refused, and what to cast to."""
    name = str(dtype).rsplit(".", 1)[-1]
    if name.startswith("float8"):
        return " (8-bit floats are not computed: cast to float16, bfloat16 or float32)"
    if name in ("longdouble", "float96", "float128"):
        return " (extended precision is not computed: cast to float64)"
    return ""


_NUMPY_SUBCLASSES = {  # ndarray subclasses that would be computed wrongly: why, and the way out
    "MaskedArray": "its mask would be ignored: pass x.filled(value)",
    "matrix": "it is always 2-D and its * is a matrix product: pass np.asarray(x)",
}


def _check_array(name: str, x: Any, xp: Any, dev: Any, min_ndim: int) -> None:
    """Refuse ``x`` unless it is a dense array of q's library (``xp``) and device (``dev``), holding
    values, of a computed floating dtype (FLOAT_DTYPES) and with at least ``min_ndim`` axes.

    Beyond type, library, dtype, device and rank, these would pass for arrays and fail later with
    errors that name no argument: a NumPy masked array or matrix (the mask would be ignored; ``*`` of
    matrices is a matrix product), a sparse torch tensor (most operations, the finiteness check first,
    are not implemented for it), a tensor on torch's ``meta`` device (shapes without values: nothing
    can be read or computed), 8-bit and extended-precision floats (not computed)."""
    its_xp = _namespace(name, x)
    if _library(its_xp) != _library(xp):
        raise TypeError(
            f"{name} is a {_library(its_xp)} array but q is a {_library(xp)} array; expected arrays of "
            "one library"
        )
    subclass = _NUMPY_SUBCLASSES.get(type(x).__name__) if _library(xp) == "numpy" else None
    if subclass is not None:
        raise TypeError(f"{name} is a numpy.{type(x).__name__} ({subclass}); expected a plain numpy.ndarray")
    layout = getattr(x, "layout", None)
    if _library(xp) == "torch" and str(layout) != "torch.strided":
        raise TypeError(
            f"{name} is a sparse tensor (layout {layout}); expected a dense (strided) array (x.to_dense())"
        )
    if _library(xp) == "torch" and x.is_meta:
        raise ValueError(
            f"{name} is on the meta device, which holds no values; expected a tensor on a device with "
            "data (cpu or cuda)"
        )
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")
    if str(x.dtype).rsplit(".", 1)[-1] not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have one of the dtypes {FLOAT_DTYPES}, got {x.dtype}{_dtype_hint(x.dtype)}"
        )
    if device(x) != dev and None not in (device(x), dev):  # a traced JAX array has no device
        raise ValueError(f"{name} is on device {device(x)} but q is on {dev}; expected one device")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {_shape(x)}")


def _check_power(kernel: str, power: Any, dtype: str) -> None:
    """``power``: p of sympow and taylor, an int in [1, MAX_EXACT_POWER[dtype]] (the compute dtype's
    exact integers), and at most MAX_TAYLOR_POWER for taylor; relu and identity are of degree 1 and take
    no power, so only the default (2) or their degree (1) is accepted there, any other value (3, "2",
    None) being a mistake to report, not to ignore."""
    if kernel in ("relu", "identity"):
        if isinstance(power, bool) or not isinstance(power, int):
            raise TypeError(
                f"power must be left at its default ({DEFAULT_POWER}) for kernel {kernel!r}, which takes no "
                f"power; got {power!r} of type {type(power).__name__}"
            )
        if power not in (DEFAULT_POWER, 1):
            raise ValueError(
                f"power must be left at its default ({DEFAULT_POWER}) or be 1 for kernel {kernel!r}, which "
                f"is of degree 1 and takes no power; got power={power}"
            )
        return
    _check_int("power", power, 1)
    limit = MAX_TAYLOR_POWER if kernel == "taylor" else MAX_EXACT_POWER[dtype]
    if power > limit:
        why = (
            "its coefficient 1/p! must be a normal float64"
            if kernel == "taylor"
            else f"p multiplies log-magnitudes in {dtype}, where integers above {limit} are not exact"
        )
        raise ValueError(f"power must be at most {limit} for kernel {kernel!r} ({why}), got power={power}")


def _log_comb(n: int, k: int) -> float:
    """log C(n, k) from lgamma: cheap for any size."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _check_feature_size(kernel: Kernel, d: int, halves: int) -> tuple[int, str]:
    """D' = H D, and the kernel described for messages; ValueError naming ``power`` when D' exceeds
    MAX_FEATURE_SIZE (the State's first axis could not exist). D is estimated in logarithms first, so
    that an astronomical one (power 10^6 at d = 16: D ~ 10^78) costs nothing, and computed exactly
    (``Kernel.feature_size``) only where it may fit."""
    p = max(kernel.degrees)
    log_size = math.log(halves) + (
        _log_comb(d + p, p) if kernel.name == "taylor" else _log_comb(d + p - 1, p)
    )
    size = None if log_size > math.log(MAX_FEATURE_SIZE) + 1 else halves * kernel.feature_size(d)
    described = f"D' = {size}" if size is not None else f"D' ~ 10^{log_size / math.log(10):.0f}"
    what = f"power={p} gives kernel {kernel.name!r} on d = {d} a feature size {described}" + (
        " (2 halves: proportions)" if halves == 2 else ""
    )
    if size is None or size > MAX_FEATURE_SIZE:
        raise ValueError(
            f"{what}, above {MAX_FEATURE_SIZE} (2^63 - 1), the longest array axis: no State of this kernel "
            "can exist; expected a lower power or a smaller d"
        )
    return size, what


def _check_feature_budget(
    size: int, what: str, d: int, e: int, T: int, batch: tuple[int, ...], form: str, chunk_size: int,
    builds_state: bool,
) -> None:  # fmt: skip
    """ValueError naming ``power`` (through ``what``) when the largest array of D' = ``size`` rows the
    call builds exceeds MAX_FEATURE_ELEMENTS entries: the state [*batch, D', e + 1] and the features of
    T tokens (recurrent; parallel returning or resuming a State: ``builds_state``) or of one chunk
    (chunked); "auto" as ``forms.choose_form`` resolves it. A parallel call without a State builds none."""
    if form == "auto":
        from .forms import choose_form  # here: forms imports this module

        form = choose_form(T, d, e, size, chunk_size)
    rows = {"recurrent": T, "chunked": min(chunk_size, T)}.get(form, T if builds_state else None)
    if rows is None:
        return
    elements = math.prod(batch) * size * max(rows, e + 1)
    if elements > MAX_FEATURE_ELEMENTS:
        raise ValueError(
            f"{what}; form {form!r} would build an array of {elements} entries (the state "
            f"[*batch, D', e + 1] or the features of {rows} tokens), above the budget MAX_FEATURE_ELEMENTS "
            f"= {MAX_FEATURE_ELEMENTS} (sympow.spec.checks); expected a lower power, a smaller d or batch, "
            "or form='parallel' without initial_state and return_state"
        )


def _any(condition: Any, xp: Any) -> bool:
    """bool(any(condition)), or False for a traced (lazy) array whose values cannot be read."""
    if not is_concrete(condition):
        return False
    return bool(xp.any(condition))


# What a value check refuses, elementwise; ``poison`` flags the same entries where values cannot be read.
def forbidden_log_gate(g: Any, xp: Any) -> Any:
    """NaN or positive: not the log of a gate in [0, 1]."""
    return xp.isnan(g) | (g > 0)


def forbidden_proportion(x: Any, xp: Any) -> Any:
    """Outside [0, 1], or NaN."""
    return ~((x >= 0) & (x <= 1))


def forbidden_log_scale(log_scale: Any, xp: Any) -> Any:
    """NaN or +inf (-inf is an empty state)."""
    return xp.isnan(log_scale) | (log_scale == math.inf)


def _check_finite(name: str, x: Any, xp: Any) -> None:
    if not _all_finite(x, xp):
        raise ValueError(f"{name} must be finite everywhere, got NaN or infinite entries")


def _all_finite(x: Any, xp: Any) -> bool:
    """Whether every entry of x is finite (True for a traced array, whose values cannot be read).

    In IEEE arithmetic a sum with an infinite or NaN term is itself infinite or NaN, so a finite sum
    proves every entry finite in one read of x without a mask (torch's isfinite costs some 25 sums on
    CPU: a State's check would otherwise outweigh a decoding step's arithmetic). A sum that is not finite
    may still come from finite entries that overflow it; only then is every entry tested."""
    if not is_concrete(x):  # traced: nothing to read, and no sum left in the traced graph
        return True
    total = xp.sum(x)  # an empty x sums to 0
    if not is_concrete(total):  # under jax.jit even a constant's sum is traced
        return True
    return bool(xp.isfinite(total)) or not _any(~xp.isfinite(x), xp)


def validate(
    q: Any,
    k: Any,
    v: Any,
    *,
    kernel: str,
    power: int,
    scale: float | None,
    log_gate: Any,
    proportions: tuple[Any, Any] | None,
    rotary: Any,
    rotary_layout: str,
    normalize: bool,
    eps: float,
    form: str,
    chunk_size: int,
    initial_state: State | None,
    return_state: bool,
    state_dtype: str | None = None,
    sequence_group: Any = None,
    sequence_exchange: str = "auto",
    cu_seqlens: Any = None,
) -> Request:
    """Check every argument of ``attention`` (api.md) and return the ``Request``; see the module doc."""
    xp = _namespace("q", q)
    dev = device(q)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_array(name, x, xp, dev, 2)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    T, d, e = q.shape[-2], q.shape[-1], v.shape[-1]
    for name, x in (("k", k), ("v", v)):
        if x.shape[-2] != T:
            raise ValueError(f"{name} must have T = {T} tokens like q (axis -2), got shape {_shape(x)}")
    if k.shape[-1] != d:
        raise ValueError(f"k must have d = {d} features like q (last axis), got shape {_shape(k)}")
    if T < 1 or d < 1 or e < 1:
        raise ValueError(f"q, k, v need T, d, e >= 1, got T = {T}, d = {d}, e = {e}")

    kernel = _check_choice("kernel", kernel, KERNELS)
    _check_power(kernel, power, "float64" if q.dtype == xp.float64 else "float32")
    the_kernel = make_kernel(kernel, power)
    feature_size, described = _check_feature_size(the_kernel, d, 1 if proportions is None else 2)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")
    if normalize and not the_kernel.nonnegative:
        raise ValueError(
            f"normalize=True needs a kernel with kappa >= 0 (even power, or relu); got kernel={kernel!r}"
            + (f" with odd power={power}" if kernel in ("sympow", "taylor") else "")
            + "; use normalize=False"
        )
    scale = d**-0.5 if scale is None else _check_number("scale", scale, positive=True)
    eps = _check_number("eps", eps, positive=False)
    if eps > 0 and not normalize:
        raise ValueError(
            f"eps applies to the normalised output only (y = N / (Z + eps)); got eps={eps!r} with "
            "normalize=False: leave eps at 0"
        )
    form = _check_choice("form", form, FORMS)
    rotary_layout = _check_choice("rotary_layout", rotary_layout, LAYOUTS)
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    if not isinstance(return_state, bool):
        raise TypeError(f"return_state must be a bool, got {return_state!r}")
    state_dtype = resolve_state_dtype(state_dtype, xp, q.dtype, the_kernel)
    _check_sequence_group(sequence_group)
    sequence_exchange = _check_choice("sequence_exchange", sequence_exchange, EXCHANGES)

    if cu_seqlens is not None:
        cu_seqlens = _check_cu_seqlens(cu_seqlens, xp, dev, T)
        if sequence_group is not None:
            raise ValueError(
                "cu_seqlens and sequence_group cannot be combined: packed sequences split over a "
                "sequence group are not implemented; got both"
            )
    sequences = None if cu_seqlens is None else cu_seqlens.shape[0] - 1
    leading = {"q": _shape(q)[:-2], "k": _shape(k)[:-2], "v": _shape(v)[:-2]}
    if log_gate is not None:
        _check_array("log_gate", log_gate, xp, dev, 1)
        if log_gate.shape[-1] != T:
            raise ValueError(f"log_gate must have shape [..., T={T}], got {_shape(log_gate)}")
        leading["log_gate"] = _shape(log_gate)[:-1]
    if proportions is not None:
        if not isinstance(proportions, (tuple, list)) or len(proportions) != 2:
            raise TypeError(f"proportions must be a pair (a, b) of arrays, got {type(proportions).__name__}")
        for name, x in zip(("proportions[0] (a)", "proportions[1] (b)"), proportions, strict=True):
            _check_array(name, x, xp, dev, 1)
            if x.shape[-1] != T:
                raise ValueError(f"{name} must have shape [..., T={T}], got {_shape(x)}")
            leading[name] = _shape(x)[:-1]
        proportions = tuple(proportions)
    if rotary is not None:
        if d % 2:
            raise ValueError(f"rotary needs an even head dimension d, got d = {d}")
        _check_array("rotary", rotary, xp, dev, 2)
        if _shape(rotary)[-2:] != (T, d // 2):
            raise ValueError(f"rotary must have shape [..., T={T}, d/2={d // 2}], got {_shape(rotary)}")
        leading["rotary"] = _shape(rotary)[:-2]
    if initial_state is not None:
        _check_state(
            initial_state, xp, dev, the_kernel, d, e, 1 if proportions is None else 2, leading, sequences
        )
    batch_shape = broadcast_shapes(leading)
    if sequences is not None and initial_state is not None:
        initial_state = _per_sequence_axes(initial_state, len(batch_shape))
    _check_feature_budget(
        feature_size, described, d, e, T, batch_shape, form, chunk_size,
        return_state or initial_state is not None,
    )  # fmt: skip

    # Value checks last: they read the data (one pass each), after every cheap check has passed.
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_finite(name, x, xp)
    if log_gate is not None:
        if _any(forbidden_log_gate(log_gate, xp), xp):
            raise ValueError(
                "log_gate must hold values <= 0 (log of a gate in [0, 1]), got a positive or NaN entry"
            )
    if proportions is not None:
        for name, x in zip(("proportions[0] (a)", "proportions[1] (b)"), proportions, strict=True):
            if _any(forbidden_proportion(x, xp), xp):
                raise ValueError(f"{name} must lie in [0, 1], got an entry outside it (or NaN)")
    if rotary is not None:
        _check_finite("rotary", rotary, xp)
    if initial_state is not None:
        _check_state_values(initial_state, xp)
    packed_starts = None
    if cu_seqlens is not None:
        _check_offset_values(cu_seqlens, T, xp)
        packed_starts = _distinct_starts(cu_seqlens, xp)
    arrays = (q, k, v, log_gate, rotary, cu_seqlens, *(proportions or ()), *(initial_state or ()))
    values_checked = all(is_concrete(x) for x in arrays if x is not None)

    return Request(
        xp=xp, q=q, k=k, v=v, kernel=the_kernel, scale=scale, log_gate=log_gate,
        proportions=proportions, rotary=rotary, rotary_layout=rotary_layout, normalize=normalize,
        eps=eps, form=form, chunk_size=chunk_size, initial_state=initial_state,
        return_state=return_state, batch_shape=batch_shape, T=T, d=d, e=e, state_dtype=state_dtype,
        values_checked=values_checked, sequence_group=sequence_group, sequence_exchange=sequence_exchange,
        state_class=state_type(Producer(the_kernel, 1 if proportions is None else 2)),
        cu_seqlens=cu_seqlens, packed_starts=packed_starts,
    )  # fmt: skip


def _check_cu_seqlens(offsets: Any, xp: Any, dev: Any, T: int) -> Any:
    """The offsets of packed sequences (math.md 10) as an int64 array [N + 1] on q's device: a 1-D
    integer array of q's library or a Python sequence of ints, of at least 2 entries. Their values are
    checked by ``_check_offset_values``."""
    if isinstance(offsets, (list, tuple, range)):
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            kinds = sorted({type(o).__name__ for o in offsets})
            raise TypeError(f"cu_seqlens must hold ints (offsets along T), got entries of type {kinds}")
        offsets = xp.asarray(list(offsets), dtype=xp.int64, device=dev)
    else:
        its_xp = _namespace("cu_seqlens", offsets)
        if _library(its_xp) != _library(xp):
            raise TypeError(
                f"cu_seqlens is a {_library(its_xp)} array but q is a {_library(xp)} array; expected an "
                "array of q's library or a Python sequence of ints"
            )
        if not xp.isdtype(offsets.dtype, "integral"):
            raise TypeError(f"cu_seqlens must have an integer dtype (offsets along T), got {offsets.dtype}")
        if device(offsets) != dev and None not in (device(offsets), dev):
            raise ValueError(
                f"cu_seqlens is on device {device(offsets)} but q is on {dev}; expected one device"
            )
    if offsets.ndim != 1:
        raise ValueError(f"cu_seqlens must be 1-D (N + 1 offsets), got shape {_shape(offsets)}")
    if offsets.shape[0] < 2:
        raise ValueError(
            f"cu_seqlens must hold at least 2 offsets (0 and T = {T}), got shape {_shape(offsets)}"
        )
    return xp.astype(offsets, xp.int64)


def forbidden_offsets(offsets: Any, T: int, xp: Any) -> Any:
    """True (a 0-d array) unless 0 = o_0 <= o_1 <= ... <= o_N = T."""
    steps = offsets[1:] - offsets[:-1]
    return (offsets[0] != 0) | (offsets[-1] != T) | xp.any(steps < 0)


def _check_offset_values(offsets: Any, T: int, xp: Any) -> None:
    if not is_concrete(offsets):
        return
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {first}")
    if last != T:
        raise ValueError(f"cu_seqlens must end at T = {T} (the tokens of q), got {last}")
    steps = offsets[1:] - offsets[:-1]
    if bool(xp.any(steps < 0)):
        where = int(xp.argmax(xp.astype(steps < 0, xp.int32)))
        raise ValueError(
            f"cu_seqlens must be non-decreasing, got {int(offsets[where])} followed by "
            f"{int(offsets[where + 1])} at index {where}"
        )


def _distinct_starts(offsets: Any, xp: Any) -> tuple[int, ...] | None:
    """The distinct starts of the non-empty packed sequences, as Python ints: what lets the parallel form
    skip the keys behind a boundary (``forms._key_start``). None where the offsets cannot be read, and on
    JAX, whose backend traces every array under jax.jit: a static copy of the offsets would compile anew
    for each packing."""
    if not is_concrete(offsets) or _library(xp) == "jax":
        return None
    values = [int(o) for o in offsets]
    return tuple(sorted({a for a, b in itertools.pairwise(values) if b > a}))


def _per_sequence_axes(state: State, ndim: int) -> State:
    """A packed initial State with unit axes inserted after its sequence axis, so that its batch axes
    line up with the call's ``ndim`` of them: [N, *b, *tail] -> [N, 1, .., 1, *b, *tail]."""
    fields = {}
    for field, tail in FIELD_TAILS.items():
        x = getattr(state, field)
        if x is None:
            continue
        missing = ndim - (x.ndim - 1 - tail)
        if missing > 0:
            x = array_namespace(x).reshape(x, (x.shape[0], *(1,) * missing, *x.shape[1:]))
        fields[field] = x
    return state._replace(**fields)


def _check_sequence_group(group: Any) -> None:
    """None, a JAX mesh axis name (a str) or a torch.distributed ProcessGroup (it has size() and rank())."""
    if group is None or isinstance(group, str):
        return
    if callable(getattr(group, "size", None)) and callable(getattr(group, "rank", None)):
        return
    raise TypeError(
        "sequence_group must be a JAX mesh axis name (a str, inside jax.shard_map) or a "
        f"torch.distributed ProcessGroup, got {type(group).__name__}"
    )


def resolve_state_dtype(requested: Any, xp: Any, dtype: Any, kernel: Kernel) -> str:
    """The state path's dtype name (math.md 9): ``requested`` ("float32" or "float64"), or for None the
    inputs' accumulation dtype (float64 for float64 inputs, else float32) when the kernel's highest
    degree is <= 4, and float64 above where the namespace has it."""
    if requested not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, got {requested!r}")
    wide = has_float64(xp)
    if requested == "float64" and not wide:
        raise ValueError(
            "state_dtype='float64' needs float64 arrays, which this namespace does not hold (JAX: enable "
            "jax_enable_x64); got state_dtype='float64'"
        )
    if requested is not None:
        return requested
    accumulation = "float64" if dtype == xp.float64 else "float32"
    if max(kernel.degrees) <= ACCUMULATION_MAX_DEGREE or not wide:
        return accumulation
    return "float64"


def _check_state_values(state: State, xp: Any) -> None:
    """S, z and mu finite; log_scale finite or -inf (an empty state), never NaN or +inf."""
    for field in ("S", "z", "mu"):
        x = getattr(state, field)
        if x is not None:
            _check_finite(f"initial_state.{field}", x, xp)
    log_scale = state.log_scale
    if _any(forbidden_log_scale(log_scale, xp), xp):
        raise ValueError(
            "initial_state.log_scale must be finite or -inf (an empty state), got NaN or +inf entries"
        )


def _check_state(
    state: Any, xp: Any, dev: Any, kernel: Kernel, d: int, e: int, halves: int, leading: dict,
    sequences: int | None = None,
) -> None:  # fmt: skip
    if not isinstance(state, State):
        raise TypeError(f"initial_state must be a sympow.State, got {type(state).__name__}")
    expected = Producer(kernel, halves)
    if state.producer is not None and state.producer != expected:
        raise ValueError(
            f"initial_state was produced by {state.producer} but this call computes {expected}; a state "
            "resumes only the kernel, power and weighting that made it"
        )
    size = halves * kernel.feature_size(d)
    fields = {"S": (size, e), "z": (size,), "log_scale": ()}
    if state.mu is not None:
        if d % 2:
            raise ValueError(f"initial_state.mu needs an even head dimension d, got d = {d}")
        fields["mu"] = (d // 2,)
    for field, tail in fields.items():
        x = getattr(state, field)
        name = f"initial_state.{field}"
        _check_array(name, x, xp, dev, len(tail))
        if tail and _shape(x)[-len(tail) :] != tail:
            raise ValueError(
                f"{name} must have shape [..., {', '.join(map(str, tail))}] for kernel "
                f"{kernel.name!r} with d = {d}, e = {e} and {halves} half(s), got {_shape(x)}"
            )
        lead = _shape(x)[: x.ndim - len(tail)]
        if sequences is not None:  # packed: one state per sequence, along a leading axis
            if not lead or lead[0] != sequences:
                raise ValueError(
                    f"{name} must have a leading axis of N = {sequences} entries, one per sequence of "
                    f"cu_seqlens (N + 1 = {sequences + 1} offsets), got shape {_shape(x)}"
                )
            lead = lead[1:]
        leading[name] = lead
