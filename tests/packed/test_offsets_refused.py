"""Bad offsets are refused before anything is computed: a ValueError or TypeError naming cu_seqlens."""

from __future__ import annotations

import numpy as np
import pytest

import sympow
from sympow import backends
from sympow.testing import convert, make_inputs
from sympow.testing.packed import per_sequence

T = 6
BAD = [
    ([0, 4, 2, 6], ValueError, "non-decreasing"),
    ([1, 3, 6], ValueError, "start at 0"),
    ([0, 3, 5], ValueError, "end at T"),
    ([0, 3, 7], ValueError, "end at T"),
    ([0], ValueError, "at least 2"),
    ([0, 3.0, 6], TypeError, "ints"),
    ([0, True, 6], TypeError, "ints"),
    ("0,6", TypeError, "array"),
]


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a backend is even chosen: refusals happen in validation."""

    def chosen(*args, **kwargs):
        raise AssertionError("a backend was chosen for a call that should have been refused")

    monkeypatch.setattr(backends, "select", chosen)


def inputs(xp):
    return convert(make_inputs(batch=(2,), T=T, d=4, e=3, seed=0), xp)


@pytest.mark.parametrize(("offsets", "error", "words"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_offsets_refused(xp, no_compute, offsets, error, words):
    arrays = inputs(xp)
    with pytest.raises(error, match="cu_seqlens") as raised:
        sympow.attention(arrays["q"], arrays["k"], arrays["v"], cu_seqlens=offsets)
    assert words in str(raised.value)


def test_bad_offset_arrays_refused(xp, no_compute):
    arrays = inputs(xp)
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    cases = [
        (xp.asarray([0.0, 3.0, 6.0], dtype=xp.float64), TypeError, "integer dtype"),
        (xp.asarray([[0, 3, 6]], dtype=xp.int64), ValueError, "1-D"),
        (xp.asarray([0, 4, 2, 6], dtype=xp.int64), ValueError, "non-decreasing"),
        (xp.asarray([0, 3, 5], dtype=xp.int32), ValueError, "end at T"),
    ]
    for offsets, error, words in cases:
        with pytest.raises(error, match="cu_seqlens") as raised:
            sympow.attention(q, k, v, cu_seqlens=offsets)
        assert words in str(raised.value), str(raised.value)
    if xp.__name__ != "numpy":  # an array of another library
        with pytest.raises(TypeError, match="cu_seqlens"):
            sympow.attention(q, k, v, cu_seqlens=np.asarray([0, 3, 6]))


def test_initial_state_of_the_wrong_number_of_sequences(xp):
    arrays = inputs(xp)
    _, state = per_sequence(sympow.attention, arrays, [0, 2, 4, 6], return_state=True)  # 3 sequences
    for offsets in ([0, 3, 6], [0, 1, 2, 3, 6]):
        with pytest.raises(ValueError, match="cu_seqlens") as raised:
            sympow.attention(arrays["q"], arrays["k"], arrays["v"], cu_seqlens=offsets, initial_state=state)
        assert "initial_state" in str(raised.value)


def test_not_with_a_sequence_group(xp):
    arrays = inputs(xp)
    with pytest.raises(ValueError, match="cu_seqlens and sequence_group"):
        sympow.attention(arrays["q"], arrays["k"], arrays["v"], cu_seqlens=[0, 6], sequence_group="seq")


def test_gpu_kernels_say_they_do_not_pack():
    """The CUDA kernel backends refuse through the registry, with the reason."""
    from sympow.backends import cupy_kernels, numba_cuda
    from sympow.spec import validate

    arrays = inputs(np)
    request = validate(
        np.asarray(arrays["q"], dtype=np.float32), np.asarray(arrays["k"], dtype=np.float32),
        np.asarray(arrays["v"], dtype=np.float32), kernel="sympow", power=2, scale=None, log_gate=None,
        proportions=None, rotary=None, rotary_layout="half", normalize=True, eps=0.0, form="chunked",
        chunk_size=4, initial_state=None, return_state=False, cu_seqlens=[0, 2, 6],
    )  # fmt: skip
    for module in (cupy_kernels, numba_cuda):
        assert "cu_seqlens" in module.supports(request)
