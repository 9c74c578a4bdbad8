"""Inputs that crashed with errors naming no argument (issue 12), each now a ValueError or TypeError
that names it, raised before anything is computed; and the memory a parallel call no longer takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tracemalloc
import types

import numpy as np
import pytest

import sympow
from sympow.backends import registry
from sympow.spec import checks
from sympow.testing import convert, make_inputs

ARRAYS = ("q", "k", "v", "log_gate", "proportions[0]", "proportions[1]", "rotary",
          "initial_state.S", "initial_state.z", "initial_state.mu", "initial_state.log_scale")  # fmt: skip


def torch_call(replace: str, make):
    """sympow p = 2 on torch float32 with every optional array and a State, ``replace`` made by
    ``make(tensor)``; returns the arguments of ``attention``."""
    torch = pytest.importorskip("torch")
    inputs = make_inputs(batch=(2,), T=5, d=4, e=3, seed=0, gate=True, rotary=True, proportions=True)
    arrays = convert(inputs, torch, "float32")
    D = 2 * 10  # two halves of C(5, 2)
    rng = np.random.default_rng(1)
    state = {"S": rng.standard_normal((2, D, 3)), "z": rng.standard_normal((2, D)),
             "mu": rng.standard_normal((2, 2)), "log_scale": np.zeros(2)}  # fmt: skip
    state = convert(state, torch, "float32")
    named = {**{k: arrays[k] for k in ("q", "k", "v", "log_gate", "rotary")},
             "proportions[0]": arrays["proportions"][0], "proportions[1]": arrays["proportions"][1],
             **{f"initial_state.{f}": x for f, x in state.items()}}  # fmt: skip
    named[replace] = make(named[replace])
    return {
        **{k: named[k] for k in ("q", "k", "v", "log_gate", "rotary")},
        "proportions": (named["proportions[0]"], named["proportions[1]"]),
        "initial_state": sympow.State(**{f: named[f"initial_state.{f}"] for f in state}),
    }


def shown(argument):
    """The argument as messages name it: proportions[0] (a), proportions[1] (b), else itself."""
    if argument.startswith("proportions["):
        index = int(argument[12])
        return re.escape(f"{argument} ({'ab'[index]})")
    return re.escape(argument)


def refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        sympow.attention(**kwargs)


# --- 1. meta tensors, 8-bit floats, sparse tensors: refused by name, for every array argument ----------


@pytest.mark.parametrize("argument", ARRAYS)
def test_a_meta_tensor_is_refused_by_name(argument):
    """Was ``Tensor.item() cannot be called on meta tensors`` (RuntimeError) for q."""
    kwargs = torch_call(argument, lambda x: x.to("meta"))
    refused(kwargs, ValueError, rf"^{shown(argument)} is on the meta device, which holds no values")


@pytest.mark.parametrize("argument", ARRAYS)
def test_an_8_bit_float_is_refused_by_name(argument):
    import torch

    kwargs = torch_call(argument, lambda x: x.to(torch.float8_e4m3fn))
    refused(kwargs, TypeError, rf"^{shown(argument)} must have one of the dtypes .* got torch\.float8_e4m3fn "
            r"\(8-bit floats are not computed")  # fmt: skip


@pytest.mark.parametrize(("argument", "layout"), [
    *((argument, "sparse_coo") for argument in ARRAYS),
    *((argument, "sparse_csr") for argument in ("log_gate", "proportions[1]", "initial_state.z")),  # 2-D
])  # fmt: skip
def test_a_sparse_tensor_is_refused_by_name(argument, layout):
    """Was a NotImplementedError from the finiteness check."""
    import warnings

    def sparse(x):
        if layout == "sparse_coo":
            return x.to_sparse()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return x.to_sparse_csr()

    kwargs = torch_call(argument, sparse)
    expected = rf"^{shown(argument)} is a sparse tensor \(layout torch\.{layout}\); expected a dense"
    refused(kwargs, TypeError, expected)


@pytest.mark.parametrize(("kind", "make"), [
    ("MaskedArray", lambda x: np.ma.masked_array(x, mask=x > 0)),
    ("matrix", lambda x: np.asmatrix(x)),
])  # fmt: skip
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_numpy_masked_arrays_and_matrices_are_refused(kind, make):
    """Both were computed as if plain (a mask ignored; a matrix's * is a matrix product)."""
    x = np.random.default_rng(0).standard_normal((4, 2))
    refused({"q": x, "k": make(x), "v": x}, TypeError, rf"^k is a numpy\.{kind}")


# --- 2. powers beyond what the dtype or the feature-size limits allow ----------------------------------


def numpy_call(d=16, T=3, e=2, batch=(2,), **options):
    arrays = make_inputs(batch=batch, T=T, d=d, e=e, seed=0)
    return {"q": arrays["q"], "k": arrays["k"], "v": arrays["v"], **options}


@pytest.mark.parametrize("form", ["auto", "parallel", "recurrent", "chunked"])
def test_a_power_whose_feature_size_exceeds_any_array_is_refused(form):
    """power = 10^6 at d = 16: D ~ 10^78; was a RuntimeError (torch: storage size overflowed) or a
    MemoryError, from the initial state made even where no form needed it."""
    refused(numpy_call(power=10**6, form=form), ValueError,
            r"^power=1000000 gives kernel 'sympow' on d = 16 a feature size D' ~ 10\^78, above "
            r"9223372036854775807 \(2\^63 - 1\)")  # fmt: skip


@pytest.mark.parametrize("power", [171, 172, 1000])
def test_taylor_powers_whose_coefficient_is_not_a_normal_float64_are_refused(power):
    """Was an OverflowError from 1 / factorial(171)."""
    assert checks.MAX_TAYLOR_POWER == 170
    refused(numpy_call(d=2, kernel="taylor", power=power, normalize=power % 2 == 0), ValueError,
            rf"^power must be at most 170 for kernel 'taylor' .*got power={power}")  # fmt: skip
    sympow.attention(**numpy_call(d=2, T=2, kernel="taylor", power=170))  # the largest computes


@pytest.mark.parametrize(("dtype", "limit"), [("float32", 2**24), ("float64", 2**53)])
def test_a_power_beyond_the_exact_integers_of_the_dtype_is_refused(dtype, limit):
    """d = 1 keeps D = 1 for any power: the limit is the compute dtype's exact integers. Was an
    OverflowError on torch ('int too big to convert') and a silent rounding of p on NumPy."""
    arrays = {key: x.astype(dtype) for key, x in make_inputs(T=2, d=1, e=1, seed=0).items()}
    with pytest.raises(ValueError, match=rf"^power must be at most {limit} for kernel 'sympow'"):
        sympow.attention(arrays["q"], arrays["k"], arrays["v"], power=limit + 2, form="parallel")


@pytest.mark.parametrize(("options", "builds"), [
    ({"form": "recurrent"}, True),
    ({"form": "chunked"}, True),
    ({"form": "parallel", "return_state": True}, True),
    ({"form": "parallel"}, False), ({"form": "auto"}, False),
])  # fmt: skip
def test_a_state_above_the_budget_is_refused_only_where_a_form_builds_it(options, builds):
    """sympow p = 10 at d = 64: D = C(73, 10) ~ 6.3e11 rows, a state of ~1.9e12 entries; the parallel
    form without a State builds none and computes (and "auto" picks it)."""
    kwargs = numpy_call(d=64, T=2, e=2, batch=(), power=10, **options)
    if builds:
        refused(kwargs, ValueError, r"^power=10 gives kernel 'sympow' on d = 64 a feature size "
                r"D' = 621324937376; form '\w+' would build an array of \d+ entries .* above the budget "
                r"MAX_FEATURE_ELEMENTS = 68719476736")  # fmt: skip
    else:
        y = sympow.attention(**kwargs)
        assert y.shape == (2, 2) and np.all(np.isfinite(y))


def test_the_budget_is_read_at_each_call(monkeypatch):
    kwargs = numpy_call(d=4, T=3, e=2, batch=(2,), form="recurrent")  # state 2 * 10 * 3 = 60 entries
    sympow.attention(**kwargs)
    monkeypatch.setattr(checks, "MAX_FEATURE_ELEMENTS", 59)
    refused(kwargs, ValueError, "above the budget MAX_FEATURE_ELEMENTS = 59")
    sympow.attention(**{**kwargs, "form": "parallel"})


# --- 3. the parallel form allocates no state it does not return ----------------------------------------


def test_the_parallel_form_allocates_no_state_it_does_not_return():
    """T = 8, p = 8, d = 16 (D = 490314), e = 16, batch 4, float64: the empty initial state alone is
    4 * 490314 * 17 * 8 bytes = 267 MB, which the parallel form made and never read (peak 267 MB
    before, 0.05 MB after). The results are those of the other forms."""
    inputs = make_inputs(batch=(4,), T=8, d=16, e=16, seed=0)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    sympow.attention(q[:1, :1], k[:1, :1], v[:1, :1], power=8, form="parallel")  # imports and caches
    tracemalloc.start()
    try:
        y = sympow.attention(q, k, v, power=8, form="parallel")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10e6, f"peak {peak / 1e6:.1f} MB"
    small = {key: x[:2, :4, :4] for key, x in inputs.items()}
    y_parallel, state_parallel = sympow.attention(**small, power=8, form="parallel", return_state=True)
    y_chunked, state_chunked = sympow.attention(**small, power=8, form="chunked", chunk_size=2,
                                                return_state=True)  # fmt: skip
    np.testing.assert_allclose(y_parallel, y_chunked, rtol=1e-10, atol=1e-12)
    true_parallel, true_chunked = state_parallel.unscaled(), state_chunked.unscaled()
    for a, b in zip(true_parallel, true_chunked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.max(np.abs(b)))
    assert y.shape == (4, 8, 16)


# --- 5. Numba device arrays; one rule for backend= and use() ------------------------------------------

_NUMBA_SCRIPT = """
import numpy as np
import sympow
from numba import cuda
q = np.random.default_rng(0).standard_normal((1, 5, 4)).astype(np.float32)
for position in range(3):
    args = [q, q, q]
    args[position] = cuda.to_device(q)
    try:
        sympow.attention(*args)
    except TypeError as error:
        name = "qkv"[position]
        assert str(error).startswith(f"{name} is a Numba CUDA device array"), error
    else:
        raise SystemExit("a Numba device array was accepted")
named = sympow.attention(q, q, q, backend="numba", form="chunked")
with sympow.backends.use("numba"):
    used = sympow.attention(q, q, q, form="chunked")
np.testing.assert_array_equal(named, used)
reference = sympow.attention(q.astype(np.float64), q.astype(np.float64), q.astype(np.float64), form="chunked")
np.testing.assert_allclose(named, reference, atol=1e-4)
assert type(sympow.attention(q, q, q)) is np.ndarray
request = sympow.spec.validate(q, q, q, kernel="sympow", power=2, scale=None, log_gate=None,
    proportions=None, rotary=None, rotary_layout="half", normalize=True, eps=0.0, form="chunked",
    chunk_size=64, initial_state=None, return_state=False)
assert sympow.backends.select(request)[0].name != "numba"
assert sympow.backends.select(request, "numba")[0].name == "numba"
print("OK")
"""


def test_numba_device_arrays_are_refused_and_naming_the_backend_is_one_rule():
    """Under the simulator a device array reached an IndexError (its shape has no negative indices),
    and backend="numba" refused the NumPy arrays that use("numba") took. Run in a fresh process:
    NUMBA_ENABLE_CUDASIM is read when Numba is first imported."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    env.pop("SYMPOW_BACKEND", None)
    result = subprocess.run([sys.executable, "-W", "error", "-c", _NUMBA_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_a_backend_named_in_any_way_runs_what_it_supports(monkeypatch):
    """``supports`` decides for backend=, use() and SYMPOW_BACKEND alike; ``automatic`` only keeps a
    backend out of automatic choice."""
    module = types.ModuleType("sympow_shy_backend")
    module.supports = lambda request: None
    module.automatic = lambda request: "only when named"
    module.run = lambda request, form: ("ran", None)
    monkeypatch.setitem(sys.modules, "sympow_shy_backend", module)
    backend = registry.Backend(name="shy", module="sympow_shy_backend", libraries=("numpy",), requires=(),
                               priority=1000, differentiable=False, description="test")  # fmt: skip
    monkeypatch.setitem(registry._REGISTRY, "shy", backend)
    q = np.ones((3, 2))
    assert isinstance(sympow.attention(q, q, q), np.ndarray)  # automatic: not the shy one
    assert sympow.attention(q, q, q, backend="shy") == "ran"
    with sympow.backends.use("shy"):
        assert sympow.attention(q, q, q) == "ran"
    monkeypatch.setenv("SYMPOW_BACKEND", "shy")
    assert sympow.attention(q, q, q) == "ran"


# --- 6. eps without normalisation; power for kernels that take none ------------------------------------


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_eps_without_normalisation_is_refused(eps):
    """eps > 0 with normalize=False was ignored."""
    expected = rf"^eps applies to the normalised output only .*got eps={eps!r} with normalize=False"
    refused(numpy_call(d=2, eps=eps, normalize=False), ValueError, expected)
    sympow.attention(**numpy_call(d=2, eps=0.0, normalize=False))


@pytest.mark.parametrize("kernel", ["relu", "identity"])
@pytest.mark.parametrize(("power", "error"), [(3, ValueError), (0, ValueError), (-2, ValueError),
                                              ("2", TypeError), (None, TypeError), (2.0, TypeError),
                                              (True, TypeError)])  # fmt: skip
def test_a_power_given_to_a_kernel_that_takes_none_is_refused(kernel, power, error):
    """Any power was accepted and ignored for relu and identity, even '2' or None."""
    normalize = kernel == "relu"
    refused(numpy_call(d=2, kernel=kernel, power=power, normalize=normalize), error,
            rf"^power must be left at its default \(2\).* for kernel '{kernel}'")  # fmt: skip


@pytest.mark.parametrize("kernel", ["relu", "identity"])
@pytest.mark.parametrize("power", [2, 1])
def test_the_default_power_and_the_degree_are_accepted_for_relu_and_identity(kernel, power):
    y = sympow.attention(**numpy_call(d=2, kernel=kernel, power=power, normalize=kernel == "relu"))
    assert y.shape == (2, 3, 2)
