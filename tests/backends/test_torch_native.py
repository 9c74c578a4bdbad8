"""The torch backend against the float64 reference: every form, kernel and weight; states; dtypes;
torch.compile; CUDA where present."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sympow
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import FORMS, attention_cases, chunk_sizes
from sympow.testing.tolerances import angle_error
from tests.spec.test_state import split

torch = pytest.importorskip("torch")


def reference(case, **overrides):
    return case.call(sympow.attention, np, dtype="float64", form="parallel", backend="reference", **overrides)


@pytest.mark.parametrize("form", FORMS)
@given(case=attention_cases(max_T=64))
def test_form_matches_reference(form, case):
    y = case.call(sympow.attention, torch, form=form, backend="torch")
    q = case.arrays(torch)["q"]
    assert isinstance(y, torch.Tensor) and y.dtype == q.dtype and y.device == q.device
    assert tuple(y.shape) == (*case.batch, case.T, case.e)
    assert_close(
        y, reference(case), case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize,
        what=f"torch {form} {case}",
    )  # fmt: skip


@given(case=attention_cases(min_T=2, max_T=48), data=st.data())
def test_resume_in_any_form_and_from_the_reference(case, data):
    """A state from one form (of this backend or of the reference) resumes in any other."""
    t = data.draw(st.integers(1, case.T - 1), label="split")
    first, second = (data.draw(st.sampled_from(FORMS)) for _ in range(2))
    first_backend = data.draw(st.sampled_from(["torch", "reference"]), label="first backend")
    second_backend = "reference" if first_backend == "torch" and data.draw(st.booleans()) else "torch"
    head, tail = split(case.inputs, t)
    y1, state = case.call(
        sympow.attention, torch, inputs=head, form=first, chunk_size=data.draw(chunk_sizes(t)),
        return_state=True, backend=first_backend,
    )  # fmt: skip
    assert isinstance(state, sympow.State)
    y2 = case.call(
        sympow.attention, torch, inputs=tail, form=second, initial_state=state,
        chunk_size=data.draw(chunk_sizes(case.T - t)), backend=second_backend,
    )  # fmt: skip
    y = np.concatenate([to_numpy(y1), to_numpy(y2)], axis=-2)
    assert_close(
        y, reference(case), case.inputs["v"], dtype_name=case.dtype, normalize=case.normalize,
        what=f"{first_backend} {first} -> {second_backend} {second} at {t}",
    )  # fmt: skip


@given(case=attention_cases(max_T=40, dtypes=("float64",)))
def test_final_state_equals_the_references(case):
    """The true sums (S, z) and mu of the final state agree with the reference's (mu as angles,
    modulo 2 pi)."""
    _, ours = case.call(sympow.attention, torch, form="chunked", return_state=True, backend="torch")
    _, ref = case.call(sympow.attention, np, form="recurrent", return_state=True, backend="reference")
    for name, a, b in zip(("S", "z"), ours.unscaled(), ref.unscaled(), strict=True):
        assert_close(a, b, dtype_name="float64", normalize=False, what=f"state {name}")
    assert (ours.mu is None) == (ref.mu is None)
    if ref.mu is not None:  # the angles themselves, modulo 2 pi (a sign flip fails; cos alone would not)
        assert angle_error(ours.mu, ref.mu) <= 1e-12, f"mu {to_numpy(ours.mu)} != {to_numpy(ref.mu)}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_accumulates_in_float32(form, dtype):
    inputs = make_inputs(batch=(2,), T=50, d=8, e=4, seed=5, gate=True, rotary=True, proportions=True)
    arrays = convert(inputs, torch, "float32")
    arrays = {key: (tuple(x.to(getattr(torch, dtype)) for x in value) if isinstance(value, tuple)
                    else value.to(getattr(torch, dtype))) for key, value in arrays.items()}  # fmt: skip
    rounded = {key: (tuple(to_numpy(x) for x in value) if isinstance(value, tuple) else to_numpy(value))
               for key, value in arrays.items()}  # fmt: skip
    kwargs = dict(power=4, form=form, chunk_size=16)
    y, state = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"], rotary=arrays["rotary"],
        proportions=arrays["proportions"], return_state=True, backend="torch", **kwargs,
    )  # fmt: skip
    assert y.dtype == getattr(torch, dtype)
    assert state.S.dtype == torch.float32
    y_ref = sympow.attention(
        rounded["q"], rounded["k"], rounded["v"], log_gate=rounded["log_gate"], rotary=rounded["rotary"],
        proportions=rounded["proportions"], backend="reference", **kwargs,
    )  # fmt: skip
    assert_close(y, y_ref, rounded["v"], dtype_name=dtype, normalize=True, what=f"{dtype} {form}")


@pytest.mark.parametrize("form", FORMS)
def test_scores_past_float32_range(form):
    """(s^4 with |s| ~ 1e12) overflows float32 unless the row scales are factored out."""
    inputs = make_inputs(T=40, d=6, e=3, seed=9, q_scale=1e12, gate=True)
    arrays = convert(inputs, torch, "float32")
    y, state = sympow.attention(
        arrays["q"], arrays["k"], arrays["v"], log_gate=arrays["log_gate"], power=4, form=form,
        chunk_size=8, return_state=True, backend="torch",
    )  # fmt: skip
    assert torch.isfinite(state.S).all() and torch.isfinite(state.log_scale).all()
    y_ref = sympow.attention(
        inputs["q"], inputs["k"], inputs["v"], log_gate=inputs["log_gate"], power=4, backend="reference"
    )
    assert_close(y, y_ref, inputs["v"], dtype_name="float32", normalize=True, what=form)


# Dynamo warns when it traces through array_api_compat's own lru_cache'd type checks (``device``,
# ``is_torch_array``); they hold no tensor, so tracing them is sound.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.parametrize(("kernel", "power"), [("sympow", 2), ("taylor", 4)])
def test_chunked_form_compiles_without_graph_breaks(kernel, power):
    """torch.compile(fullgraph=True) of everything after validation (the spec's chunked form executed by
    the torch backend); same result as eager. Taylor p = 4 has two monomial blocks (degrees 3 and 4)."""
    from sympow.backends import torch_native
    from sympow.spec import validate

    arrays = convert(
        make_inputs(batch=(2,), T=20, d=4, e=3, seed=0, gate=True, rotary=True, proportions=True),
        torch, "float32",
    )  # fmt: skip
    request = validate(
        arrays["q"], arrays["k"], arrays["v"], kernel=kernel, power=power, scale=0.5,
        log_gate=arrays["log_gate"], proportions=arrays["proportions"], rotary=arrays["rotary"],
        rotary_layout="half", normalize=True, eps=0.0, form="chunked", chunk_size=8, initial_state=None,
        return_state=True,
    )  # fmt: skip

    def run(q, k, v, g, a, b, w):
        arrays = dict(q=q, k=k, v=v, log_gate=g, proportions=(a, b), rotary=w, initial_state=None)
        return torch_native.forward(request.with_arrays(arrays), "chunked")

    args = (
        arrays["q"],
        arrays["k"],
        arrays["v"],
        arrays["log_gate"],
        *arrays["proportions"],
        arrays["rotary"],
    )
    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, dynamic=False, backend="aot_eager")
    (y, state), (y_eager, state_eager) = compiled(*args), run(*args)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(state.S, state_eager.S)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_matches_cpu(form, dtype):
    inputs = make_inputs(batch=(2, 3), T=130, d=16, e=8, seed=1, gate=True, rotary=True, proportions=True)
    arrays = convert(inputs, torch, "float32")
    wanted = getattr(torch, dtype)
    on_gpu = {key: (tuple(x.cuda().to(wanted) for x in value) if isinstance(value, tuple)
                    else value.cuda().to(wanted)) for key, value in arrays.items()}  # fmt: skip
    y, state = sympow.attention(
        on_gpu["q"], on_gpu["k"], on_gpu["v"], log_gate=on_gpu["log_gate"], rotary=on_gpu["rotary"],
        proportions=on_gpu["proportions"], form=form, return_state=True,
    )  # fmt: skip
    assert y.device.type == "cuda" and state.S.device.type == "cuda"
    rounded = {key: (tuple(to_numpy(x) for x in value) if isinstance(value, tuple) else to_numpy(value))
               for key, value in on_gpu.items()}  # fmt: skip
    y_ref = sympow.attention(
        rounded["q"], rounded["k"], rounded["v"], log_gate=rounded["log_gate"], rotary=rounded["rotary"],
        proportions=rounded["proportions"], backend="reference",
    )  # fmt: skip
    assert_close(y, y_ref, rounded["v"], dtype_name=dtype, normalize=True, what=f"cuda {form} {dtype}")
