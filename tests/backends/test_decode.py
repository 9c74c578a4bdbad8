"""Decoding (issue 16): T single-token calls, each resuming the State of the one before, equal one call
over the T tokens, in the outputs and the final State, on every backend of the CPU, for every kernel and
weighting, float32 and float64; a decode loop compiled once (torch.compile, jax.jit with lax.scan or
fori_loop, the State as carry) equals the eager loop. The CUDA kernel backends' decode path is held to
the same in tests/kernels (the simulator and GPU runs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sympow
from sympow.spec import KERNELS
from sympow.testing import assert_close, convert, make_inputs, to_numpy
from sympow.testing.strategies import AttentionCase, attention_cases, given_for
from sympow.testing.tolerances import angle_error, unit_roundoff

# (backend, namespace): the reference on three namespaces, the native executors on their own. (The
# reference on eager JAX compiles every primitive for every shape, seconds a call: tests/spec covers it.)
PAIRS = [
    ("reference", "numpy"), ("reference", "array_api_strict"), ("reference", "torch"),
    ("torch", "torch"), ("jax", "jax.numpy"),
]  # fmt: skip


# mu is accumulated in float64 (or compensated float32) whatever the inputs' dtype: a loop and one call
# agree to a few float32 round-offs of an angle at worst (as tests/spec/test_rarely_reached_paths.py)
ANGLE_TOLERANCE = 8 * math.pi * unit_roundoff("float32")


def namespace(name: str):
    return pytest.importorskip(name)


def decode(case: AttentionCase, xp, backend: str, dtype: str):
    """(y [*batch, T, e] as NumPy, final State) of T calls of one token each, the State carried."""
    state, outputs = None, []
    for t in range(case.T):
        token = {key: _token(value, t, len(case.batch)) for key, value in case.inputs.items()}
        y, state = case.call(
            sympow.attention, xp, dtype=dtype, inputs=token, backend=backend, initial_state=state,
            return_state=True,
        )  # fmt: skip
        assert tuple(y.shape) == (*case.batch, 1, case.e)
        outputs.append(to_numpy(y))
    return np.concatenate(outputs, axis=-2), state


def _token(x, t, batch_axes):
    """Token t of an input (q, k, v [*batch, T, n]; log_gate [*batch, T]; rotary; a pair), kept as T = 1."""
    if isinstance(x, tuple):
        return tuple(_token(a, t, batch_axes) for a in x)
    return x[..., t : t + 1] if x.ndim == batch_axes + 1 else x[..., t : t + 1, :]


def check_decode(case: AttentionCase, backend: str, library: str, dtype: str) -> None:
    xp = namespace(library)
    y_loop, state_loop = decode(case, xp, backend, dtype)
    y_one, state_one = case.call(
        sympow.attention, xp, dtype=dtype, backend=backend, form="parallel", return_state=True
    )
    what = f"{backend} on {library}, {dtype}, {case}"
    y_ref = case.call(sympow.attention, np, dtype="float64", form="parallel", backend="reference")
    # the loop queries a state at every token: the contract's tolerance (math.md 9), as any resumed call
    case.assert_matches(y_loop, y_ref, dtype=dtype, what=f"decode loop, {what}")
    case.assert_matches(y_one, y_ref, dtype=dtype, what=f"one call, {what}")
    assert type(state_loop) is type(state_one)
    for name, a, b in zip(("S", "z"), state_loop.unscaled(), state_one.unscaled(), strict=True):
        assert_close(a, b, dtype_name=dtype, normalize=False, what=f"final state {name}, {what}")
    if state_one.mu is None:
        assert state_loop.mu is None
    else:
        assert angle_error(state_loop.mu, state_one.mu) <= ANGLE_TOLERANCE, what


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("backend", "library"), PAIRS, ids=[f"{b}-{n}" for b, n in PAIRS])
def test_decode_loop_equals_one_call_with_every_weight(backend, library, kernel, dtype):
    """Gates, rotary and proportions together, for each kernel."""
    power = {"sympow": 2, "taylor": 3}.get(kernel, 1)
    normalize = kernel == "relu" or kernel == "sympow"
    inputs = make_inputs(batch=(2,), T=5, d=4, e=3, seed=7, gate=True, rotary=True, proportions=True)
    case = AttentionCase(
        inputs=inputs, batch=(2,), T=5, d=4, e=3, seed=7, kernel=kernel, power=power, normalize=normalize,
        scale=None, eps=0.0, rotary_layout="half", chunk_size=2, dtype=dtype,
    )  # fmt: skip
    check_decode(case, backend, library, dtype)


@pytest.mark.parametrize(("backend", "library"), PAIRS, ids=[f"{b}-{n}" for b, n in PAIRS])
def test_decode_loop_equals_one_call(backend, library):
    """Drawn kernels, powers, shapes, options, and each weight on or off."""
    xp = namespace(library)

    @given_for(xp, case=attention_cases(min_T=2, max_T=6, max_d=16, dtypes=("float32", "float64")))
    def check(case):
        check_decode(case, backend, library, case.dtype)

    check()


def _loop_inputs(library: str, dtype: str):
    raw = make_inputs(batch=(2, 3), T=6, d=4, e=3, seed=11, gate=True, rotary=True, proportions=True)
    return convert(raw, library, dtype)


# Dynamo warns when it traces array_api_compat's lru_cache'd type checks (pure functions of a type)
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compiled_decode_step_equals_eager():
    """One step compiled with fullgraph=True (validation, backend choice and the step in one graph),
    called token by token with the State as its carry, equals the eager loop; one compilation serves
    every step. (aot_eager here, as a CI budget allows; inductor is what benchmarks/bench_decode.py
    times, and it agrees to float32 round-off there.)"""
    torch = pytest.importorskip("torch")
    x = _loop_inputs("torch", "float32")
    a, b = x["proportions"]

    def step(state, q, k, v, g, rotary, a, b):
        return sympow.attention(q, k, v, log_gate=g, rotary=rotary, proportions=(a, b), initial_state=state,
                                return_state=True)  # fmt: skip

    def token(t):
        """Token t of every input, T = 1 (tensors: a step traced once serves every token)."""
        at = slice(t, t + 1)
        return (x["q"][..., at, :], x["k"][..., at, :], x["v"][..., at, :], x["log_gate"][..., at],
                x["rotary"][..., at, :], a[..., at], b[..., at])  # fmt: skip

    from torch._dynamo.testing import CompileCounterWithBackend

    _, prefilled = step(None, *token(0))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    states = {"eager": prefilled, "compiled": prefilled}
    for t in range(1, 6):
        y, states["eager"] = step(states["eager"], *token(t))
        y_compiled, states["compiled"] = compiled(states["compiled"], *token(t))
        assert_close(y_compiled, y, x["v"], dtype_name="float32", normalize=True, what=f"token {t}")
    for field in ("S", "z", "log_scale", "mu"):
        assert_close(getattr(states["compiled"], field), getattr(states["eager"], field),
                     dtype_name="float32", normalize=False, what=field)  # fmt: skip
    assert type(states["compiled"]) is type(states["eager"])
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for 5 steps"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loop", ["scan", "fori_loop"])
def test_jax_compiled_decode_loop_equals_eager(loop, dtype):
    """jax.jit of a lax.scan (or fori_loop) over the tokens, the State as the carry, equals the eager
    loop of calls, in the outputs and the final State."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = _loop_inputs("jax", dtype)
    a, b = x["proportions"]
    # [T, *batch, ...]: the token axis first, as lax.scan takes it
    xs = tuple(jnp.moveaxis(z, 2, 0) for z in (x["q"], x["k"], x["v"], x["rotary"]))
    xs += tuple(jnp.moveaxis(z, -1, 0) for z in (x["log_gate"], a, b))

    def step(state, token):
        q, k, v, rotary, g, at, bt = (z[..., None, :] if z.ndim == 3 else z[..., None] for z in token)
        y, state = sympow.attention(q, k, v, log_gate=g, rotary=rotary, proportions=(at, bt),
                                    initial_state=state, return_state=True)  # fmt: skip
        return state, y[..., 0, :]

    first = tuple(z[0] for z in xs)
    rest = tuple(z[1:] for z in xs)
    prefilled, _ = step(None, first)
    eager_state, eager = prefilled, []
    for t in range(5):
        eager_state, y = step(eager_state, tuple(z[t] for z in rest))
        eager.append(y)
    if loop == "scan":
        state, ys = jax.jit(lambda s, r: jax.lax.scan(step, s, r))(prefilled, rest)
    else:

        def body(t, carry):
            state, ys = carry
            state, y = step(state, tuple(z[t] for z in rest))
            return state, ys.at[t].set(y)

        ys0 = jnp.zeros((5, *eager[0].shape), dtype=eager[0].dtype)
        state, ys = jax.jit(lambda s: jax.lax.fori_loop(0, 5, body, (s, ys0)))(prefilled)
    assert_close(ys, jnp.stack(eager), x["v"], dtype_name=dtype, normalize=True, what=f"{loop} outputs")
    for field in ("S", "z", "log_scale", "mu"):
        assert_close(getattr(state, field), getattr(eager_state, field), dtype_name=dtype,
                     normalize=False, what=f"{loop} {field}")  # fmt: skip
    assert type(state) is type(eager_state)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jax_scan_decodes_from_the_prefill_of_a_prompt(dtype):
    """The recipe of the README: prefill a prompt in one call, then scan over the new tokens; the outputs
    equal one call over prompt and new tokens."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = _loop_inputs("jax", dtype)
    q, k, v, g = x["q"], x["k"], x["v"], x["log_gate"]
    whole = sympow.attention(q, k, v, log_gate=g)
    _, state = sympow.attention(
        q[..., :2, :], k[..., :2, :], v[..., :2, :], log_gate=g[..., :2], return_state=True
    )

    def step(state, token):
        qt, kt, vt, gt = token
        y, state = sympow.attention(
            qt[..., None, :], kt[..., None, :], vt[..., None, :], log_gate=gt[..., None],
            initial_state=state, return_state=True,
        )  # fmt: skip
        return state, y[..., 0, :]

    tokens = (*(jnp.moveaxis(z[..., 2:, :], -2, 0) for z in (q, k, v)), jnp.moveaxis(g[..., 2:], -1, 0))
    _, ys = jax.jit(lambda s, t: jax.lax.scan(step, s, t))(state, tokens)
    assert_close(jnp.moveaxis(ys, 0, -2), whole[..., 2:, :], v, dtype_name=dtype, normalize=True)
