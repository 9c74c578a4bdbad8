"""Gradients with respect to q, k, v, log_gate, rotary and proportions: torch autograd and jax.grad of
the three forms agree with each other and with finite differences (float64), also through a state
handed from a first call to a second."""

from __future__ import annotations

import numpy as np
import pytest

import sympow
from sympow.testing import make_inputs

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
jax_test_util = pytest.importorskip("jax.test_util")

FORMS = ("parallel", "recurrent", "chunked")
NAMES = ("q", "k", "v", "log_gate", "rotary", "a", "b")
# (kernel, power, normalize): normalised sympow, an unnormalised signed Taylor kernel (Based-like) and
# relu. relu is kinked at 0, so it is compared between forms and frameworks only; the finite-difference
# checks use the smooth kernels.
KERNELS = (("sympow", 2, True), ("taylor", 3, False), ("relu", 1, True))
T, SPLIT = 7, 3


def inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 inputs whose finite-difference perturbations stay valid: log-gates in [-1, -0.05],
    proportions in [0.1, 0.9]."""
    x = make_inputs(batch=(2,), T=T, d=4, e=3, seed=seed, gate=True, rotary=True, proportions=True)
    a, b = x.pop("proportions")
    return {**x, "log_gate": x["log_gate"] - 0.05, "a": 0.1 + 0.8 * a, "b": 0.1 + 0.8 * b}


def call(q, k, v, log_gate, rotary, a, b, *, kernel, form, backend, resume=False):
    """y of one call, or of two calls (the second resuming from the first's state) concatenated."""
    power, normalize = kernel[1], kernel[2]
    options = dict(kernel=kernel[0], power=power, normalize=normalize, chunk_size=3, backend=backend)
    if not resume:
        return sympow.attention(
            q, k, v, log_gate=log_gate, rotary=rotary, proportions=(a, b), form=form, **options
        )
    cut = (slice(None, SPLIT), slice(SPLIT, None))
    y1, state = sympow.attention(
        q[..., cut[0], :], k[..., cut[0], :], v[..., cut[0], :], log_gate=log_gate[..., cut[0]],
        rotary=rotary[..., cut[0], :], proportions=(a[..., cut[0]], b[..., cut[0]]), form=form,
        return_state=True, **options,
    )  # fmt: skip
    y2 = sympow.attention(
        q[..., cut[1], :], k[..., cut[1], :], v[..., cut[1], :], log_gate=log_gate[..., cut[1]],
        rotary=rotary[..., cut[1], :], proportions=(a[..., cut[1]], b[..., cut[1]]), form="chunked",
        initial_state=state, **options,
    )  # fmt: skip
    concat = torch.cat if isinstance(y1, torch.Tensor) else jnp.concatenate
    return concat([y1, y2], -2)


def torch_grads(x, kernel, form, resume=False):
    args = [torch.tensor(x[name], dtype=torch.float64, requires_grad=True) for name in NAMES]
    weight = torch.tensor(np.random.default_rng(7).standard_normal((2, T, 3)))
    loss = (call(*args, kernel=kernel, form=form, backend="torch", resume=resume) * weight).sum()
    loss.backward()
    return [arg.grad.numpy() for arg in args]


def jax_grads(x, kernel, form, resume=False):
    weight = jnp.asarray(np.random.default_rng(7).standard_normal((2, T, 3)))

    def loss(*args):
        return (call(*args, kernel=kernel, form=form, backend="jax", resume=resume) * weight).sum()

    args = [jnp.asarray(x[name], dtype=jnp.float64) for name in NAMES]
    grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(NAMES)))))  # one compilation per case
    return [np.asarray(g) for g in grad(*args)]


def assert_grads_close(got, expected, what, names=NAMES):
    for name, g, e in zip(names, got, expected, strict=True):
        scale = max(np.max(np.abs(e)), 1e-300)
        err = np.max(np.abs(g - e)) / scale
        assert err < 1e-9, f"{what}: d/d{name} differs by {err:.2e} relative"


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k[0]}{k[1]}")
def test_forms_and_frameworks_agree(kernel):
    """torch parallel == recurrent == chunked == jax (each form), all with respect to every input."""
    x = inputs()
    expected = torch_grads(x, kernel, "parallel")
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in expected)
    for form in FORMS:
        assert_grads_close(torch_grads(x, kernel, form), expected, f"torch {form}")
        assert_grads_close(jax_grads(x, kernel, form), expected, f"jax {form}")


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k[0]}{k[1]}")
def test_gradient_through_a_resumed_state(kernel):
    """Two calls joined by the first's state have the gradient of one call (they are one function)."""
    x = inputs(1)
    expected = torch_grads(x, kernel, "parallel")
    for form in FORMS:
        assert_grads_close(torch_grads(x, kernel, form, resume=True), expected, f"torch {form} resumed")
    assert_grads_close(jax_grads(x, kernel, "chunked", resume=True), expected, "jax chunked resumed")


@pytest.mark.parametrize("resume", [False, True], ids=["one-call", "resumed"])
@pytest.mark.parametrize("form", FORMS)
def test_torch_gradcheck(form, resume):
    x = inputs(2)
    args = tuple(torch.tensor(x[name], dtype=torch.float64, requires_grad=True) for name in NAMES)

    def f(*args):
        return call(*args, kernel=KERNELS[0], form=form, backend="torch", resume=resume)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)


# The jax forms agree with the torch forms (above), which gradcheck checks one by one: finite differences
# on the chunked form through a resumed state (two lax.scan calls joined by a State) suffice here.
@pytest.mark.parametrize(("form", "resume"), [("chunked", True)])
def test_jax_check_grads(form, resume):
    x = inputs(3)
    args = tuple(jnp.asarray(x[name], dtype=jnp.float64) for name in NAMES)

    def f(*args):  # check_grads evaluates its finite differences on NumPy arrays
        args = [jnp.asarray(arg) for arg in args]
        return call(*args, kernel=KERNELS[1], form=form, backend="jax", resume=resume)

    jax_test_util.check_grads(f, args, order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-4)


def one_hot_inputs(seed: int) -> dict[str, np.ndarray]:
    """q and k each a multiple of one basis vector (norms in [0.5, 3]), so most scores are exactly 0."""
    rng = np.random.default_rng(seed)
    q, k = (np.eye(4)[rng.integers(0, 4, (2, T))] * rng.uniform(0.5, 3.0, (2, T, 1)) for _ in range(2))
    return {"q": q, "k": k, "v": rng.standard_normal((2, T, 3)), "log_gate": -rng.uniform(0.05, 1, (2, T))}


def plain(q, k, v, log_gate, kernel, power, xp):
    """y_i = sum_{j <= i} kappa(q_i k_j / 2) exp(g_{j+1} + ... + g_i) v_j written out (d = 4, sigma = 1/2)."""
    s = (q @ xp.swapaxes(k, -1, -2)) / 2
    kappa = s if kernel == "identity" else s**power if kernel == "sympow" else 1 + s
    G = xp.cumsum(log_gate, axis=-1)
    decay = xp.exp(G[..., :, None] - G[..., None, :])
    return (xp.tril(kappa * decay)) @ v


VANISHING = (("identity", 1), ("sympow", 1), ("taylor", 1), ("sympow", 2))


@pytest.mark.parametrize("kernel", VANISHING, ids=lambda k: f"{k[0]}{k[1]}")
def test_gradients_where_scores_vanish(kernel):
    """Orthogonal q_i and k_j give s_ij = 0 exactly. Written in log space a term exp(t + n log|cos|) has
    derivative 0 there, right for n >= 2 but not for the linear term (d s / d q = k): every form and
    backend must give the gradient of the plain formula, also on rows whose scores all vanish."""
    x = one_hot_inputs(4)
    weight = np.random.default_rng(8).standard_normal((2, T, 3))
    names = ("q", "k", "v", "log_gate")
    options = dict(kernel=kernel[0], power=kernel[1], normalize=False, chunk_size=3)

    args = [torch.tensor(x[n], requires_grad=True) for n in names]
    expected = torch.autograd.grad(
        (plain(*args, *kernel, torch) * torch.tensor(weight)).sum(), args
    )  # fmt: skip
    expected = [g.numpy() for g in expected]
    assert np.abs(expected[0]).max() > 0
    for form in FORMS:
        for backend in ("torch", "reference"):
            y = sympow.attention(*args[:3], log_gate=args[3], form=form, backend=backend, **options)
            got = torch.autograd.grad((y * torch.tensor(weight)).sum(), args)
            assert_grads_close([g.numpy() for g in got], expected, f"torch {backend} {form}", names)

        def loss(*a, form=form):
            y = sympow.attention(*a[:3], log_gate=a[3], form=form, backend="jax", **options)
            return (y * weight).sum()

        got = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jnp.asarray(x[n]) for n in names))
        assert_grads_close([np.asarray(g) for g in got], expected, f"jax {form}", names)
