"""The CUDA C kernels run on the host (g++ emulation), against the float64 specification.

No GPU is needed: ``host_emulation`` compiles the .cu sources unchanged with the CUDA built-ins emulated
(block threads as host threads, __syncthreads as a barrier), and the launch layer of
``sympow.kernels.cupy_launch`` runs on NumPy arrays. This checks the kernels' arithmetic, indexing and
synchronisation logic; the CuPy loading, DLPack and the device itself are covered by test_cupy_gpu.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from sympow.kernels import cupy_launch
from sympow.spec import State
from sympow.testing import assert_close, relative_error, tolerance
from sympow.testing.tolerances import angle_error

from .cuda_cases import Case, from_bfloat16_bits, stored, true_state
from .host_emulation import EmulatedLauncher, build, compiler_missing


@pytest.fixture(scope="module")
def launcher():
    reason = compiler_missing()
    if reason is not None:
        pytest.skip(reason)
    return EmulatedLauncher(build())


def run_kernels(launcher, case: Case, inputs, form: str, state=None):
    """(y float64, State of NumPy arrays) of the kernels on ``inputs``."""
    arrays = {key: stored(inputs[key], case.dtype) for key in ("q", "k", "v")}
    ops, mu_end = cupy_launch.prepare_operands(
        np, arrays["q"], arrays["k"], arrays["v"], dtype=case.dtype, batch_shape=case.batch,
        power=case.p, scale=case.d**-0.5, log_gate=inputs.get("log_gate"), rotary=inputs.get("rotary"),
        rotary_layout=case.rotary_layout, normalize=case.normalize, eps=case.eps, state=state,
    )  # fmt: skip
    table = cupy_launch.feature_index_table(case.d, case.p)
    if form == "chunked":
        C = cupy_launch.chunk_for(case.chunk_size, ops.T, ops.d, ops.e, launcher.max_shared_bytes)
        y, S, z, M = cupy_launch.run_chunked(np, launcher, ops, table, C)
    else:
        y, S, z, M = cupy_launch.run_recurrent(np, launcher, ops, table, 2 * launcher.sm_count)
    y = from_bfloat16_bits(y) if case.dtype == "bfloat16" else y.astype(np.float64)
    batch = case.batch
    D = ops.D
    result = State(
        S=S.reshape(*batch, D, case.e), z=z.reshape(*batch, D), mu=mu_end, log_scale=M.reshape(batch)
    )
    return y.reshape(*batch, ops.T, case.e), result


CASES = [
    Case(T=37, d=8, e=5),
    Case(T=37, d=8, e=5, power=4, rotary_layout="interleaved"),
    Case(T=37, d=6, e=3, kernel="identity", normalize=False, gate=False),
    Case(T=37, d=8, e=5, normalize=False, rotary=False, chunk_size=8),
    Case(T=37, d=8, e=5, eps=0.5, gate=False, q_scale=4.0),
    Case(T=37, d=8, e=5, dtype="float16"),
    Case(T=37, d=8, e=5, dtype="bfloat16", power=4),
    Case(T=70, d=8, e=33, batch=(1,), chunk_size=64),  # full 64-token chunks; e + 1 > 32: column tiles
]


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernels_match_reference(launcher, case, form):
    inputs = case.inputs()
    y_ref, state_ref = case.reference(inputs)
    y, state = run_kernels(launcher, case, inputs, form)
    assert_close(y, y_ref, inputs["v"], dtype_name=case.dtype, normalize=case.normalize, what=form)
    S, z = true_state(state)
    S_ref, z_ref = true_state(state_ref)
    tol = tolerance(case.dtype)
    assert relative_error(S, S_ref, normalize=False) <= tol, "state S"
    assert relative_error(z, z_ref, normalize=False) <= tol, "state z"
    assert state.S.dtype == np.float32 and state.log_scale.shape == case.batch
    if case.rotary:  # the angles themselves, modulo 2 pi (a sign flip fails; cos alone would not)
        assert angle_error(state.mu, state_ref.mu) <= 1e-9, f"mu {state.mu} != {state_ref.mu}"


@pytest.mark.parametrize("second", ["chunked", "recurrent"])
@pytest.mark.parametrize("first", ["chunked", "recurrent"])
def test_state_resumes(launcher, first, second):
    """Two calls, the second from the first's state, equal one call of the specification."""
    case = Case(T=41, d=8, e=4, power=2, rotary_layout="interleaved", chunk_size=8)
    inputs = case.inputs()
    y_ref, _ = case.reference(inputs)
    split = 19
    head = {
        key: value[..., :split, :] if value.ndim == 3 else value[..., :split] for key, value in inputs.items()
    }
    tail = {
        key: value[..., split:, :] if value.ndim == 3 else value[..., split:] for key, value in inputs.items()
    }
    y1, state = run_kernels(launcher, case, head, first)
    y2, _ = run_kernels(launcher, case, tail, second, state=state)
    y = np.concatenate([y1, y2], axis=-2)
    assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True, what=f"{first} then {second}")


def test_decode_one_token_many_heads(launcher):
    """The decode path: T = 1 for 6 heads at once, from a state of 30 tokens."""
    case = Case(T=31, d=8, e=6, batch=(3, 2), power=2)
    inputs = case.inputs()
    y_ref, _ = case.reference(inputs)
    prefix = {k: v[..., :30, :] if v.ndim == 4 else v[..., :30] for k, v in inputs.items()}
    token = {k: v[..., 30:, :] if v.ndim == 4 else v[..., 30:] for k, v in inputs.items()}
    _, state = run_kernels(launcher, case, prefix, "chunked")
    y, _ = run_kernels(launcher, case, token, "recurrent", state=state)
    assert_close(y, y_ref[..., 30:, :], inputs["v"], dtype_name="float32", normalize=True, what="decode")


def test_large_scores_stay_finite(launcher):
    """q scaled by 30: p = 4 scores reach 1e10 and more; the log-space scales keep y and the state finite."""
    case = Case(T=33, d=8, e=4, power=4, q_scale=30.0, rotary=False)
    inputs = case.inputs()
    inputs["k"] = inputs["k"] * 30.0
    y_ref, state_ref = case.reference(inputs)
    for form in ("chunked", "recurrent"):
        y, state = run_kernels(launcher, case, inputs, form)
        assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True, what=form)
        assert np.isfinite(state.S).all() and np.isfinite(state.log_scale).all()
        assert abs(float(state.log_scale[0]) - float(state_ref.log_scale[0])) < 50
