"""The backend registry: what is available and why not, how a backend is chosen, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import sympow
from sympow import backends
from sympow.backends import registry
from sympow.spec import validate
from sympow.testing import convert, make_inputs

OPTIONS = dict(
    kernel="sympow", power=2, scale=None, log_gate=None, proportions=None, rotary=None,
    rotary_layout="half", normalize=True, eps=0.0, form="chunked", chunk_size=4,
    initial_state=None, return_state=False,
)  # fmt: skip


def request_of(xp):
    arrays = convert(make_inputs(T=6, d=4, e=2, seed=0), xp, "float64")
    return validate(arrays["q"], arrays["k"], arrays["v"], **OPTIONS)


def chosen(xp, argument=None) -> str:
    return backends.select(request_of(xp), argument)[0].name


def test_import_imports_no_framework():
    code = (
        "import sys, sympow, sympow.backends; sympow.backends.registered(); "
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules, "
        "[m for m in ('torch', 'jax') if m in sys.modules]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_call_imports_no_framework():
    code = (
        "import sys, numpy as np, sympow; x = np.ones((5, 4)); sympow.attention(x, x, x[:, :2]); "
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_available_reports_every_backend():
    rows = {row.name: row for row in backends.available()}
    for name in ("reference", "torch", "jax"):
        assert name in rows
        assert rows[name].available, rows[name].reason
        assert rows[name].reason is None
        assert rows[name].differentiable


def test_automatic_choice_by_library():
    import jax.numpy as jnp
    import torch

    assert chosen(np) == "reference"
    assert chosen(torch) == "torch"
    assert chosen(jnp) == "jax"


def test_argument_beats_context_beats_environment(monkeypatch):
    import torch

    monkeypatch.setenv(backends.ENVIRONMENT_VARIABLE, "reference")
    assert chosen(torch) == "reference"
    monkeypatch.setenv(backends.ENVIRONMENT_VARIABLE, "torch")
    assert chosen(torch) == "torch"
    with backends.use("reference"):
        assert chosen(torch) == "reference"
        assert chosen(torch, "torch") == "torch"
    assert chosen(torch) == "torch"
    monkeypatch.delenv(backends.ENVIRONMENT_VARIABLE)
    with backends.use("reference"):
        assert chosen(torch) == "reference"
    assert chosen(torch) == "torch"


def test_choice_reaches_the_call(monkeypatch):
    """sympow.attention runs the chosen backend's module."""
    import torch

    calls = []
    from sympow.backends import reference

    original = reference.run
    monkeypatch.setattr(reference, "run", lambda request, form: calls.append(form) or original(request, form))
    arrays = convert(make_inputs(T=6, d=4, e=2, seed=0), torch, "float64")
    sympow.attention(arrays["q"], arrays["k"], arrays["v"], form="parallel")
    assert calls == []
    sympow.attention(arrays["q"], arrays["k"], arrays["v"], form="parallel", backend="reference")
    assert calls == ["parallel"]


def test_unknown_name_lists_the_registered():
    with pytest.raises(ValueError, match=r"backend must name one of the backends .*got 'nope'"):
        chosen(np, "nope")
    with pytest.raises(ValueError, match="nope"), backends.use("nope"):
        pass


@pytest.mark.parametrize(
    ("argument", "error", "message"),
    [(["x"], TypeError, r"backend must be .*str.* got \['x'\] of type list"), ("", ValueError, "got ''")],
)
def test_a_backend_argument_that_names_nothing_is_refused(argument, error, message):
    """An unhashable or empty ``backend=`` was a bare TypeError or silently automatic (issue 12)."""
    q = np.ones((3, 4))
    with pytest.raises(error, match=message):
        sympow.attention(q, q, q, backend=argument)


def test_an_unknown_backend_in_the_environment_names_the_variable(monkeypatch):
    """SYMPOW_BACKEND=nosuch: the call's error names the variable, and ``sympow backends`` reports it
    with exit 2 instead of listing it as the default (issue 12)."""
    monkeypatch.setenv("SYMPOW_BACKEND", "nosuch")
    q = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"environment variable SYMPOW_BACKEND must name .*'nosuch'"):
        sympow.attention(q, q, q)
    from sympow import cli

    assert cli.main(["backends"]) == 2


def test_backend_for_another_library_is_refused():
    expected = r"backend 'torch' cannot run this call: it takes \['torch'\] arrays, not numpy; these can: " \
        r"\['reference'\]"  # fmt: skip
    with pytest.raises(ValueError, match=expected):
        chosen(np, "torch")


@pytest.fixture
def ghost(monkeypatch):
    """A backend whose required package is missing, registered with the highest priority."""
    backend = registry.Backend(
        name="ghost", module="sympow.backends.reference", libraries=("numpy",),
        requires=("sympow_no_such_package",), priority=1000, differentiable=False, description="test",
    )  # fmt: skip
    monkeypatch.setitem(registry._REGISTRY, "ghost", backend)
    return backend


def test_unavailable_backend_is_reported_with_its_reason(ghost):
    rows = {row.name: row for row in backends.available()}
    assert not rows["ghost"].available
    assert "sympow_no_such_package" in rows["ghost"].reason


def test_unavailable_backend_is_skipped_automatically(ghost):
    assert chosen(np) == "reference"


def test_unavailable_backend_asked_for_raises_with_reason(ghost, monkeypatch):
    expected = r"backend 'ghost' cannot run this call: package 'sympow_no_such_package' is not installed; " \
        r"these can: \['reference'\]"  # fmt: skip
    with pytest.raises(ValueError, match=expected):
        chosen(np, "ghost")
    with pytest.raises(ValueError, match=expected), backends.use("ghost"):
        chosen(np)
    monkeypatch.setenv(backends.ENVIRONMENT_VARIABLE, "ghost")
    with pytest.raises(ValueError, match=expected):
        chosen(np)


def test_backend_that_does_not_support_the_request(monkeypatch):
    """supports() returning a reason: skipped automatically, and named in the error when asked for."""
    module = types.ModuleType("sympow_picky_backend")
    module.supports = lambda request: None if request.T > 100 else f"T = {request.T} is too short"
    module.run = lambda request, form: pytest.fail("must not run")
    monkeypatch.setitem(sys.modules, "sympow_picky_backend", module)
    backend = registry.Backend(
        name="picky", module="sympow_picky_backend", libraries=("numpy",), requires=(), priority=1000,
        differentiable=False, description="test",
    )  # fmt: skip
    monkeypatch.setitem(registry._REGISTRY, "picky", backend)
    assert chosen(np) == "reference"
    with pytest.raises(ValueError, match=r"'picky' cannot run this call: T = 6 is too short; these can"):
        chosen(np, "picky")
