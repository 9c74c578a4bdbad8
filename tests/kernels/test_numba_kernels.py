"""The "numba" backend (Numba CUDA kernels) against the float64 specification.

Without a GPU the kernels run in Numba's CUDA simulator (tests/kernels/conftest.py) on NumPy arrays and on
small shapes (every simulated thread is a Python thread); with one, the same tests run on PyTorch CUDA
tensors, and the ``gpu``-marked parity tests add large shapes and bfloat16.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sympow
from sympow.kernels import numba_launch
from sympow.testing import assert_close, make_inputs, to_numpy
from sympow.testing.strategies import attention_cases, chunk_sizes

SIMULATED = numba_launch.simulated()
KERNEL_EXAMPLES = 20 if SIMULATED else 50


def _library():
    """The array library the backend takes here: numpy in the simulator, torch CUDA on a GPU."""
    if SIMULATED:
        return np, None
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch, and the Numba simulator is off")
    return torch, "cuda"


def _on_device(x, dtype):
    xp, device = _library()
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_on_device(a, dtype) for a in x)
    if device is None:
        return np.asarray(x, dtype=dtype)
    return xp.asarray(np.asarray(x, dtype=np.float64), device=device).to(getattr(xp, dtype))


def _state_on_device(state):
    if state is None:
        return None
    _, device = _library()
    if device is None:
        return state
    import torch

    def move(x):
        return None if x is None else torch.as_tensor(np.asarray(to_numpy(x)), device=device)

    return sympow.State(*(move(x) for x in state))


def numba_call(inputs, options, dtype, **kwargs):
    """sympow.attention on the numba backend; (y, state) as given back."""
    arrays = {key: _on_device(value, dtype) for key, value in inputs.items()}
    kwargs = {**options, **kwargs}
    if kwargs.get("initial_state") is not None:
        kwargs["initial_state"] = _state_on_device(kwargs["initial_state"])
    with sympow.backends.use("numba"):
        return sympow.attention(
            arrays["q"], arrays["k"], arrays["v"], log_gate=arrays.get("log_gate"),
            rotary=arrays.get("rotary"), **kwargs,
        )  # fmt: skip


def reference_call(inputs, options, **kwargs):
    """The float64 specification on the same (already rounded) inputs."""
    arrays = {key: None if value is None else np.asarray(value, np.float64) for key, value in inputs.items()}
    return sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays.get("log_gate"),
        rotary=arrays.get("rotary"), backend="reference", **{**options, **kwargs},
    )  # fmt: skip


def true_state(state):
    """(S, z) = exp(log_scale) (S_stored, z_stored) in float64 NumPy."""
    factor = np.exp(to_numpy(state.log_scale))
    return to_numpy(state.S) * factor[..., None, None], to_numpy(state.z) * factor[..., None]


def assert_state_close(state, reference, dtype):
    S, z = true_state(state)
    S_ref, z_ref = true_state(reference)
    scale = max(np.abs(S_ref).max(), np.abs(z_ref).max(), 1e-300)
    error = max(np.abs(S - S_ref).max(), np.abs(z - z_ref).max()) / scale
    # the table's tolerance: the state sums T <= 16 float32 terms of the same rounded inputs as the
    # float64 reference (measured at most 5e-7 relative to max |S|, |z|, against 1e-4)
    assert error <= sympow.testing.tolerance(dtype), f"state error {error:.3e} (relative to max |S|, |z|)"
    if reference.mu is None:
        assert state.mu is None
    else:
        assert np.allclose(to_numpy(state.mu), to_numpy(reference.mu), atol=1e-9)


def kernel_cases(**kwargs):
    """Small problems inside the kernels' coverage (sympow p = 2, 4 and identity; no proportions)."""
    options = {
        "kernels": ("sympow", "identity"), "dtypes": ("float32",), "max_T": 16, "max_d": 4, "max_e": 3,
        "max_p": 4, "even_power": True, "max_batch_axes": 1, "proportions": False, "max_features": 35,
    }  # fmt: skip
    return attention_cases(**{**options, **kwargs})


def split(inputs, t):
    def cut(x, part):
        if x is None:
            return None
        axis = x.ndim - 1 if x.ndim == inputs["q"].ndim - 1 else x.ndim - 2
        index = [slice(None)] * x.ndim
        index[axis] = slice(None, t) if part == 0 else slice(t, None)
        return x[tuple(index)]

    return tuple({key: cut(value, part) for key, value in inputs.items()} for part in (0, 1))


@settings(max_examples=KERNEL_EXAMPLES)
@given(case=kernel_cases(), form=st.sampled_from(("recurrent", "chunked")))
def test_forms_match_the_reference(case, form):
    y, state = numba_call(
        case.inputs, case.options, case.dtype, form=form, chunk_size=case.chunk_size, return_state=True
    )
    y_ref, state_ref = reference_call(case.inputs, case.options, form="parallel", return_state=True)
    assert_close(y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize, what=form)
    assert str(y.dtype).endswith(case.dtype) and tuple(y.shape) == tuple(y_ref.shape)
    assert_state_close(state, state_ref, case.dtype)
    assert str(state.S.dtype).endswith("float32") and str(state.log_scale.dtype).endswith("float32")


@settings(max_examples=KERNEL_EXAMPLES)
@given(case=kernel_cases(min_T=2, gate=True), data=st.data())
def test_split_and_resume_across_backends(case, data):
    """numba -> numba, numba -> spec and spec -> numba resumption all equal one float64 call."""
    t = data.draw(st.integers(1, case.T - 1), label="split")
    first = data.draw(st.sampled_from(("recurrent", "chunked")), label="first form")
    second = data.draw(st.sampled_from(("recurrent", "chunked")), label="second form")
    chunk = data.draw(chunk_sizes(t), label="chunk")
    head, tail = split(case.inputs, t)
    y_ref, state_ref = reference_call(case.inputs, case.options, form="parallel", return_state=True)
    y1, state = numba_call(head, case.options, case.dtype, form=first, chunk_size=chunk, return_state=True)
    y2, final = numba_call(
        tail, case.options, case.dtype, form=second, chunk_size=chunk, initial_state=state, return_state=True
    )
    y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    assert_close(y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize, what="numba")
    assert_state_close(final, state_ref, case.dtype)

    numpy_state = sympow.State(*(None if x is None else to_numpy(x) for x in state))
    y2_spec = reference_call(tail, case.options, form=second, initial_state=numpy_state)
    y = np.concatenate([to_numpy(y1), to_numpy(y2_spec)], axis=-2)
    assert_close(y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize, what="to spec")

    _, spec_state = reference_call(head, case.options, form="chunked", return_state=True)
    y2_numba = numba_call(tail, case.options, case.dtype, form=second, initial_state=spec_state)
    y = np.concatenate([to_numpy(y_ref)[..., :t, :], to_numpy(y2_numba)], axis=-2)
    assert_close(
        y, y_ref, case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize, what="from spec"
    )


@settings(max_examples=max(2, KERNEL_EXAMPLES // 2))
@given(
    case=kernel_cases(dtypes=("float16",), gate=True, rotary=True),
    form=st.sampled_from(("recurrent", "chunked")),
)
def test_float16_inputs_accumulate_in_float32(case, form):
    y = numba_call(case.inputs, case.options, case.dtype, form=form, chunk_size=case.chunk_size)
    y_ref = reference_call(case.inputs, case.options, form="parallel")
    assert str(y.dtype).endswith("float16")
    assert_close(y, y_ref, case.inputs["v"], dtype_name="float16", normalize=case.normalize)


@pytest.mark.parametrize("power", [2, 4])
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_large_scores_are_stabilised(power, form):
    """Scores of about 1e3 (s^4 ~ 1e12, beyond float32 once summed with gates): the row max and the
    state's log scale keep them finite and exact."""
    inputs = make_inputs(batch=(2,), T=10, d=4, e=2, seed=3, gate=True, q_scale=400.0, dtype="float32")
    options = {"power": power, "normalize": False}
    y, state = numba_call(inputs, options, "float32", form=form, chunk_size=3, return_state=True)
    y_ref, state_ref = reference_call(inputs, options, form="parallel", return_state=True)
    assert_close(y, y_ref, dtype_name="float32", normalize=False)
    assert_state_close(state, state_ref, "float32")
    y = numba_call(inputs, {"power": power, "eps": 1e-3}, "float32", form=form, chunk_size=4)
    y_ref = reference_call(inputs, {"power": power, "eps": 1e-3}, form="parallel")
    assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True)


def test_decode_one_token_many_heads():
    """The decode path: T = 1 steps for several heads from a prefilled state, form "auto"; the outputs
    equal the reference's and the final State one call's over the same tokens (issue 16)."""
    inputs = make_inputs(batch=(3,), T=6, d=4, e=3, seed=5, gate=True, rotary=True, dtype="float32")
    head, tail = split(inputs, 4)
    options = {"power": 2}
    y_ref = reference_call(inputs, options, form="parallel")
    _, state = numba_call(head, options, "float32", form="chunked", chunk_size=2, return_state=True)
    outputs = []
    for t in range(2):
        token, _ = split(split(tail, t)[1], 1)
        y, state = numba_call(token, options, "float32", form="auto", initial_state=state, return_state=True)
        assert tuple(y.shape) == (3, 1, 3)
        outputs.append(to_numpy(y))
    assert_close(
        np.concatenate(outputs, axis=-2),
        to_numpy(y_ref)[..., 4:, :],
        tail["v"],
        dtype_name="float32",
        normalize=True,
    )
    _, whole = numba_call(inputs, options, "float32", form="chunked", chunk_size=2, return_state=True)
    for name, a, b in zip(("S", "z"), true_state(state), true_state(whole), strict=True):
        assert_close(a, b, dtype_name="float32", normalize=False, what=f"final state {name}")


def test_zero_denominator_gives_zero():
    inputs = make_inputs(T=5, d=2, e=2, seed=1, dtype="float32")
    inputs["k"][:] = 0.0
    for form in ("recurrent", "chunked"):
        y = numba_call(inputs, {"power": 2}, "float32", form=form, chunk_size=2)
        assert np.array_equal(to_numpy(y), np.zeros((5, 2)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel": "taylor", "power": 2}, "kernel 'taylor'"),
        ({"kernel": "sympow", "power": 6}, "with power 6"),
        ({"kernel": "relu"}, "kernel 'relu'"),
        ({"form": "parallel"}, "form 'parallel'"),
        ({"proportions": True}, "proportions"),
        ({"state_dtype": "float64"}, "keep a float32 state"),
    ],
)
def test_uncovered_requests_are_refused_when_forced_and_routed_when_automatic(options, message):
    inputs = make_inputs(T=3, d=2, e=2, seed=0, dtype="float32")
    options = dict(options)
    if options.pop("proportions", False):
        options["proportions"] = tuple(_on_device(np.full(3, 0.5), "float32") for _ in range(2))
    arrays = {key: _on_device(inputs[key], "float32") for key in ("q", "k", "v")}
    with pytest.raises(ValueError, match=message), sympow.backends.use("numba"):
        sympow.attention(arrays["q"], arrays["k"], arrays["v"], **options)
    y = sympow.attention(arrays["q"], arrays["k"], arrays["v"], **options)  # automatic: another backend
    assert tuple(y.shape) == (3, 2)


def test_limits_and_dtypes_are_refused_when_forced():
    xp_dtype = "float32"
    for d, e, what in ((130, 2, "exceed"), (2, 129, "exceed")):
        inputs = make_inputs(T=2, d=d, e=e, seed=0, dtype=xp_dtype)
        arrays = {key: _on_device(inputs[key], xp_dtype) for key in ("q", "k", "v")}
        with pytest.raises(ValueError, match=what), sympow.backends.use("numba"):
            sympow.attention(arrays["q"], arrays["k"], arrays["v"], kernel="identity", normalize=False)
    inputs = make_inputs(T=2, d=2, e=2, seed=0)
    arrays = {key: _on_device(inputs[key], "float64") for key in ("q", "k", "v")}
    with pytest.raises(ValueError, match="dtype"), sympow.backends.use("numba"):
        sympow.attention(arrays["q"], arrays["k"], arrays["v"])


def test_numpy_is_never_chosen_automatically():
    """With the simulator on, NumPy calls outside use("numba") still run elsewhere."""
    from sympow.spec import validate

    inputs = make_inputs(T=3, d=2, e=2, seed=0, dtype="float32")
    request = validate(
        inputs["q"], inputs["k"], inputs["v"], kernel="sympow", power=2, scale=None, log_gate=None,
        proportions=None, rotary=None, rotary_layout="half", normalize=True, eps=0.0, form="auto",
        chunk_size=64, initial_state=None, return_state=False,
    )  # fmt: skip
    chosen, _ = sympow.backends.select(request)
    assert chosen.name != "numba"
    # named, it takes NumPy arrays under the simulator, as use("numba") does: one rule (issue 12)
    assert sympow.backends.select(request, "numba")[0].name == "numba"


_PTX_SCRIPT = """
from numba.cuda.cudadrv import nvvm
if not nvvm.is_available():
    print("NO_NVVM")
    raise SystemExit(0)
from sympow.kernels.numba_kernels import compile_ptx
for P, d, e, C in ((2, 8, 4, 16), (4, 4, 3, 8), (1, 128, 128, 64)):
    for name, ptx in compile_ptx(P, d, e, C).items():
        assert ".entry" in ptx and ".f64" not in ptx, (P, d, e, C, name)
print("OK")
"""


def test_kernels_compile_to_ptx():
    """Every kernel compiles to PTX with libNVVM (no GPU needed), in float32 only (no .f64 instructions).
    Run in a fresh process: the simulator of this one has no compiler."""
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _PTX_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if "NO_NVVM" in result.stdout:
        pytest.skip("libNVVM is not installed (pip install nvidia-cuda-nvcc provides it)")
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def _gpu_skip_reason() -> str | None:
    if SIMULATED:
        return "Numba runs its CUDA simulator here (NUMBA_ENABLE_CUDASIM=1): no GPU"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is present"
    return None


gpu = pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    ("kernel", "power", "d"), [("sympow", 2, 64), ("sympow", 4, 16), ("identity", 1, 128)]
)
@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_gpu_parity(dtype, kernel, power, d, form):
    """Large shapes on torch CUDA tensors: the result is a CUDA tensor of the input dtype, within the
    tolerance of that dtype; the state resumes in the specification."""
    import torch

    normalize = kernel == "sympow"
    T = 96 if form == "recurrent" else 300
    inputs = make_inputs(batch=(2, 3), T=T, d=d, e=64, seed=7, gate=True, rotary=True, dtype="float32")
    if dtype == "bfloat16":  # the reference sees the values the kernels see
        inputs = {k: torch.tensor(v).to(torch.bfloat16).double().numpy() for k, v in inputs.items()}
    else:
        inputs = {k: v.astype(dtype) for k, v in inputs.items()}
    options = {"kernel": kernel, "power": power, "normalize": normalize}
    head, tail = split(inputs, T - 5)
    y, state = numba_call(head, options, dtype, form=form, return_state=True)
    assert isinstance(y, torch.Tensor) and y.is_cuda and str(y.dtype) == f"torch.{dtype}"
    y_ref = reference_call(inputs, options, form="chunked")
    assert_close(y, to_numpy(y_ref)[..., : T - 5, :], head["v"], dtype_name=dtype, normalize=normalize)
    y2 = reference_call(
        tail,
        options,
        form="chunked",
        initial_state=sympow.State(*(None if x is None else to_numpy(x) for x in state)),
    )
    assert_close(y2, to_numpy(y_ref)[..., T - 5 :, :], tail["v"], dtype_name=dtype, normalize=normalize)


@pytest.mark.gpu
@gpu
def test_gpu_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    inputs = make_inputs(batch=(4,), T=200, d=32, e=32, seed=2, gate=True, dtype="float32")
    arrays = {k: cupy.asarray(v) for k, v in inputs.items()}
    y = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"], form="chunked", backend="numba"
    )
    assert isinstance(y, cupy.ndarray)
    y_ref = reference_call(inputs, {}, form="chunked")
    assert_close(cupy.asnumpy(y), y_ref, inputs["v"], dtype_name="float32", normalize=True)
