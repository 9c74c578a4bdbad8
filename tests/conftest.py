"""Shared fixtures and Hypothesis profiles.

Profiles: "ci" (default; derandomised, about 25 examples a test) and "thorough" (300 examples),
picked with the HYPOTHESIS_PROFILE environment variable. The ``xp`` fixture runs a test once per
array namespace that imports: numpy, array_api_strict, torch (CPU) and jax.numpy (CPU, with x64
enabled so that float64 is real float64).
"""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, Phase, settings

try:  # before any JAX array exists: float64 must be real in the jax tests
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
except ImportError:  # pragma: no cover - jax is optional
    pass

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    # No shrinking: a failure is reported as drawn (with its blob), which keeps a failing CI run
    # short; reproduce and shrink it under the "thorough" profile.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.explain],
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NAMESPACES = {
    "numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "torch": "torch",
    "jax": "jax.numpy",
}


def import_namespace(name: str):
    """The namespace module for an id of NAMESPACES, or a pytest skip when it does not import."""
    return pytest.importorskip(NAMESPACES[name])


@pytest.fixture(scope="session", params=list(NAMESPACES), ids=list(NAMESPACES))
def xp(request):
    """Each array namespace in turn (session-scoped: Hypothesis tests may use it)."""
    return import_namespace(request.param)


@pytest.fixture(scope="session")
def np_xp():
    return importlib.import_module("numpy")


@pytest.fixture
def spec_backend(request):
    """Pin the backend for the tests of the specification.

    SYMPOW_SPEC_BACKEND names it: "reference" (the array-API spec) for every namespace, "auto" for
    the default selection (native torch and jax backends for those libraries), or a backend name.
    Unset, the reference runs everywhere except under JAX, which keeps the default (native, jitted)
    backend: the reference in eager JAX compiles every primitive for every new shape, about ten
    seconds a call, too slow for property tests (tests/spec/test_forms.py checks the reference on
    JAX on fixed shapes)."""
    import sympow.backends

    name = os.environ.get("SYMPOW_SPEC_BACKEND")
    if name is None:
        callspec = getattr(request.node, "callspec", None)
        on_jax = callspec is not None and callspec.params.get("xp") == "jax"
        name = "auto" if on_jax else "reference"
    if name == "auto":
        yield None
        return
    with sympow.backends.use(name):
        yield name
