"""The pure-Python parts of the CuPy backend: coverage and routing, argument checks, launch configuration."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

import sympow
from sympow.backends import cupy_kernels
from sympow.kernels import cuda_sources, cupy_launch
from sympow.spec import validate
from sympow.spec.features import feature_table


def request(T=8, d=4, e=3, dtype="float32", *, library="cupy", **options):
    """A validated request on NumPy arrays, presented to supports() as arrays of ``library``."""
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal((2, T, d)).astype(dtype) for _ in range(2))
    v = rng.standard_normal((2, T, e)).astype(dtype)
    arguments = dict(
        kernel="sympow", power=2, scale=None, log_gate=None, proportions=None, rotary=None,
        rotary_layout="half", normalize=True, eps=0.0, form="auto", chunk_size=64, initial_state=None,
        return_state=False,
    )  # fmt: skip
    arguments.update(options)
    made = validate(q, k, v, **arguments)
    return dataclasses.replace(made, xp=types.SimpleNamespace(__name__=library)) if library else made


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, None),
        ({"kernel": "identity", "normalize": False}, None),
        ({"power": 4}, None),
        ({"power": 1, "normalize": False}, None),
        ({"form": "recurrent"}, None),
        ({"kernel": "taylor"}, "'sympow' and 'identity', not 'taylor'"),
        ({"kernel": "relu"}, "not 'relu'"),
        ({"power": 6}, "powers (1, 2, 4), got power=6"),
        ({"d": 256}, "d, e <= 128, got d = 256"),
        ({"e": 129}, "e = 129"),
        ({"dtype": "float64"}, "not float64"),
        ({"form": "parallel"}, "not 'parallel'"),
        ({"library": "numpy"}, "not numpy"),
        ({"state_dtype": "float64"}, "keep a float32 state"),
    ],
)
def test_supports(options, expected):
    sizes = {key: options.pop(key) for key in ("d", "e", "dtype", "library") if key in options}
    reason = cupy_kernels.supports(request(**sizes, **options))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


def test_supports_refuses_proportions():
    a = np.full((2, 8), 0.5, dtype=np.float32)
    reason = cupy_kernels.supports(request(proportions=(a, a)))
    assert reason == "the CuPy kernels do not cover proportions"


def test_supports_refuses_cpu_tensors():
    torch = pytest.importorskip("torch")
    q = torch.ones(6, 4, requires_grad=True)
    v = torch.ones(6, 3)
    args = dict(
        kernel="sympow", power=2, scale=None, log_gate=None, proportions=None, rotary=None,
        rotary_layout="half", normalize=True, eps=0.0, form="auto", chunk_size=64, initial_state=None,
        return_state=False,
    )  # fmt: skip
    assert cupy_kernels.supports(validate(q, q, v, **args)) == "the CuPy kernels take CUDA tensors only"


def test_forced_backend_raises_and_auto_routes_elsewhere():
    """Here CuPy is missing (or no GPU): backend='cupy' raises naming why; automatic choice still runs."""
    q = np.ones((5, 4))
    rows = {row.name: row for row in sympow.backends.available()}
    assert "cupy" in rows
    assert rows["cupy"].available or "cupy" in rows["cupy"].reason.lower(), rows["cupy"].reason
    if rows["cupy"].available:
        pytest.skip("CuPy runs here: the forced-error path is covered by the gpu tests")
    with pytest.raises(ValueError, match="backend 'cupy' cannot run this call"):
        sympow.attention(q, q, q, backend="cupy")
    assert sympow.attention(q, q, q).shape == (5, 4)


def test_run_refuses_uncovered_request():
    with pytest.raises(ValueError, match=r"cannot run this call: .*taylor"):
        cupy_kernels.run(request(kernel="taylor"), "chunked")


@pytest.mark.parametrize(("d", "p"), [(1, 1), (5, 1), (3, 2), (8, 2), (64, 2), (5, 4), (8, 4)])
def test_feature_table_matches_the_specification(d, p):
    table = cupy_launch.feature_index_table(d, p)
    indices, _ = feature_table(d, p)
    unpacked = [tuple(int(x >> np.uint32(8 * m)) & 0xFF for m in range(p)) for x in table]
    assert table.dtype == np.uint32 and unpacked == list(indices)


def test_chunk_for_caps_and_halves():
    big = 227 * 1024
    assert cupy_launch.chunk_for(64, 10, 64, 64, big) == 10
    assert cupy_launch.chunk_for(256, 5000, 64, 64, big) == cupy_launch.MAX_CHUNK
    assert cupy_launch.chunk_for(16, 5000, 64, 64, big) == 16
    small = cupy_launch.chunk_for(64, 5000, 128, 128, 48 * 1024)
    assert small < 64
    assert 4 * cupy_launch.output_shared_floats(small, 128, 128) <= 48 * 1024
    with pytest.raises(ValueError, match="shared memory"):
        cupy_launch.chunk_for(64, 5000, 128, 128, 1024)


@pytest.mark.parametrize(
    ("D", "B", "target"), [(2080, 64, 528), (2080, 1, 528), (6, 8, 16), (766480, 8, 528)]
)
def test_split_rows_covers_every_row(D, B, target):
    split, rows = cupy_launch.split_rows(D, B, target)
    assert split * rows >= D > (split - 1) * rows
    assert rows >= 1 and split >= 1


def test_prepare_operands_checks_arguments():
    x = np.zeros((2, 3, 4), dtype=np.float32)
    common = dict(batch_shape=(2,), power=2, scale=0.5)
    with pytest.raises(ValueError, match="dtype must be one of"):
        cupy_launch.prepare_operands(np, x, x, x, dtype="float64", **common)
    wide = np.zeros((2, 3, 130), dtype=np.float32)
    with pytest.raises(ValueError, match="d, e <= 128"):
        cupy_launch.prepare_operands(np, wide, wide, x, dtype="float32", **common)


def test_prepare_operands_broadcasts_without_copying_contiguous_inputs():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 3, 4)).astype(np.float32)
    shared_k = rng.standard_normal((3, 4)).astype(np.float32)
    gate = -rng.random((1, 3)).astype(np.float32)
    ops, mu_end = cupy_launch.prepare_operands(
        np, q, shared_k, q, dtype="float32", batch_shape=(2,), power=2, scale=0.25, log_gate=gate,
    )  # fmt: skip
    assert ops.q is q or np.shares_memory(ops.q, q)
    assert ops.k.shape == (2, 3, 4) and ops.k.flags.c_contiguous
    assert ops.log_gate.shape == (2, 3) and ops.log_gate.dtype == np.float32
    assert ops.flags == cupy_launch.NORMALIZE | cupy_launch.HAS_GATE
    assert mu_end is None and ops.root_scale == 0.5 and ops.D == 10


def test_name_expressions():
    assert cuda_sources.name_expression("sympow_chunk_states", "bfloat16", 2) == (
        "sympow_chunk_states<__nv_bfloat16, 2>"
    )
    assert (
        cuda_sources.name_expression("sympow_recurrent_output", "float16")
        == "sympow_recurrent_output<__half>"
    )
    with pytest.raises(ValueError, match="power must be one of"):
        cuda_sources.name_expression("sympow_chunk_output", "float32", 3)
    with pytest.raises(ValueError, match="dtype must be one of"):
        cuda_sources.name_expression("sympow_chunk_output", "float64", 2)
