"""The "cupy" backend on a GPU, against the float64 specification (marked ``gpu``; skipped, with the reason,
where CuPy or a GPU is missing).

Parity over every dtype (float32 and float16 as CuPy arrays, bfloat16 as PyTorch CUDA tensors, which CuPy
cannot hold), p = 2 and 4 and identity, gating, rotary (both layouts), normalised or not, eps, initial and
final state, both forms, full-size tiles (d = e = 64 and 128); the torch round trip (no copy in, a torch
tensor out) and Numba device arrays through the launcher's conversions.
"""

from __future__ import annotations

import numpy as np
import pytest

import sympow
from sympow.spec import State
from sympow.testing import assert_close, relative_error, to_numpy, tolerance

from .cuda_cases import Case, true_state

pytestmark = pytest.mark.gpu


def _cupy_with_gpu():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the `cupy` extra)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        pytest.skip(f"no CUDA driver or GPU for CuPy: {error}")
    if count == 0:
        pytest.skip("CuPy sees no GPU")
    return cupy


@pytest.fixture(scope="module")
def cupy():
    return _cupy_with_gpu()


@pytest.fixture(scope="module")
def torch_cuda(cupy):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    return torch


def device_arrays(case: Case, inputs, cupy, torch=None):
    """The case's inputs as CuPy arrays (float32, float16) or torch CUDA tensors (any dtype)."""
    if torch is not None:
        dtype = getattr(torch, case.dtype)
        return {k: torch.tensor(v, dtype=dtype, device="cuda") for k, v in inputs.items()}
    return {k: cupy.asarray(v.astype(case.dtype)) for k, v in inputs.items()}


def call(case: Case, arrays, form: str, initial_state=None):
    return sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays.get("log_gate"), rotary=arrays.get("rotary"),
        form=form, chunk_size=case.chunk_size, initial_state=initial_state, return_state=True,
        backend="cupy", **case.options(),
    )  # fmt: skip


CASES = [
    Case(T=300, d=16, e=8),
    Case(T=300, d=16, e=8, power=4, rotary_layout="interleaved"),
    Case(T=300, d=16, e=8, kernel="identity", normalize=False),
    Case(T=200, d=8, e=8, normalize=False, eps=0.0, gate=False),
    Case(T=200, d=8, e=8, eps=1e-3, q_scale=5.0),
    Case(T=300, d=64, e=64, batch=(2, 2), chunk_size=64),
    Case(T=130, d=128, e=128, batch=(1,), chunk_size=64),
    Case(T=100, d=32, e=64, power=4, batch=(1,), chunk_size=32, rotary=False),
]
DTYPES = ["float32", "float16", "bfloat16"]


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("base", CASES, ids=lambda c: c.id)
def test_parity_with_reference(cupy, form, dtype, base):
    import dataclasses

    case = dataclasses.replace(base, dtype=dtype)
    torch = None
    if dtype == "bfloat16":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("bfloat16 inputs come as PyTorch CUDA tensors; PyTorch has no CUDA device")
    inputs = case.inputs()
    y_ref, state_ref = case.reference(inputs)
    y, state = call(case, device_arrays(case, inputs, cupy, torch), form)
    assert_close(y, y_ref, inputs["v"], dtype_name=dtype, normalize=case.normalize, what=f"{form} {case.id}")
    S, z = true_state(state)
    S_ref, z_ref = true_state(state_ref)
    assert relative_error(S, S_ref, normalize=False) <= tolerance(dtype)
    assert relative_error(z, z_ref, normalize=False) <= tolerance(dtype)


@pytest.mark.parametrize(("first", "second"), [("chunked", "recurrent"), ("recurrent", "chunked")])
def test_state_resumes(cupy, first, second):
    case = Case(T=257, d=16, e=8, rotary_layout="interleaved", chunk_size=32)
    inputs = case.inputs()
    y_ref, _ = case.reference(inputs)
    arrays = device_arrays(case, inputs, cupy)
    split = 129

    def part(sl):
        return {k: v[..., sl, :] if v.ndim == 3 else v[..., sl] for k, v in arrays.items()}

    y1, state = call(case, part(slice(0, split)), first)
    y2, _ = call(case, part(slice(split, None)), second, initial_state=state)
    y = cupy.concatenate([y1, y2], axis=-2)
    assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True)


def test_decode_many_heads(cupy):
    """One new token for 64 heads (batch x heads = 8 x 8), d = e = 64, after a 200-token prefill."""
    case = Case(T=201, d=64, e=64, batch=(8, 8), chunk_size=64)
    inputs = case.inputs()
    y_ref, _ = case.reference(inputs)
    arrays = device_arrays(case, inputs, cupy)
    head = {k: v[..., :200, :] if v.ndim == 4 else v[..., :200] for k, v in arrays.items()}
    token = {k: v[..., 200:, :] if v.ndim == 4 else v[..., 200:] for k, v in arrays.items()}
    _, state = call(case, head, "chunked")
    y, next_state = call(case, token, "recurrent", initial_state=state)
    assert_close(y, y_ref[..., 200:, :], inputs["v"], dtype_name="float32", normalize=True)
    assert isinstance(next_state, State) and next_state.S.dtype == cupy.float32


def test_torch_round_trip(torch_cuda):
    torch = torch_cuda
    case = Case(T=100, d=16, e=8, dtype="bfloat16")
    inputs = case.inputs()
    arrays = device_arrays(case, inputs, None, torch)
    y, state = call(case, arrays, "chunked")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.device == arrays["q"].device
    assert isinstance(state.S, torch.Tensor) and state.S.dtype == torch.float32
    assert state.mu.dtype == torch.float64


def test_numba_device_arrays_round_trip(cupy):
    cuda = pytest.importorskip("numba.cuda")
    from sympow.kernels import cupy_launch

    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    device = cuda.to_device(host)
    as_cupy = cupy_launch.to_cupy(device)
    assert as_cupy.data.ptr == device.device_ctypes_pointer.value  # no copy
    back = cupy_launch.from_cupy(as_cupy * 2, "numba", "float32")
    np.testing.assert_array_equal(back.copy_to_host(), host * 2)


def test_forced_backend_refuses_uncovered(cupy):
    q = cupy.ones((5, 4), dtype=cupy.float32)
    with pytest.raises(ValueError, match="taylor"):
        sympow.attention(q, q, q, kernel="taylor", backend="cupy")
    y = sympow.attention(q, q, q, kernel="taylor")  # routed elsewhere
    assert to_numpy(y).shape == (5, 4)
