"""Shared fixtures and Hypothesis profiles.

Profiles: "ci" (default; derandomised, about 25 examples a test) and "thorough" (300 examples),
picked with the HYPOTHESIS_PROFILE environment variable. Under a derandomised profile every test node
draws from its own seed, the CRC-32 of its node id (``pytest_runtest_call`` below): derandomisation
alone seeds from the test function's source, so every parametrisation of a test, and every
``given_for`` property inside one, would draw the very same cases. The ``xp`` fixture runs a test once per
array namespace that imports: numpy, array_api_strict, torch (CPU) and jax.numpy (CPU, with x64
enabled so that float64 is real float64).
"""

from __future__ import annotations

import importlib
import os
import zlib

import pytest
from hypothesis import HealthCheck, Phase, seed, settings

from sympow.testing.strategies import seeded_properties

from .own_process import in_own_process, run_alone

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


def node_seed(nodeid: str) -> int:
    """The Hypothesis seed of a test node under a derandomised profile: stable across runs and
    machines, and different for each parametrisation."""
    return zlib.crc32(nodeid.encode())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Seed the node's Hypothesis test (a module-level ``@given``) and the ``given_for`` properties
    built while it runs with ``node_seed`` (a seed overrides derandomisation, and implies no example
    database). The function object is shared by every parametrisation, so its seed is set here, for
    each node as it runs, not at collection. Random profiles ("thorough") are left random."""
    if not settings.default.derandomize:
        return (yield)
    value = node_seed(item.nodeid)
    test = getattr(item, "obj", None)
    if getattr(test, "is_hypothesis_test", False):
        seed(value)(test)
    with seeded_properties(value):
        return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A node marked ``own_process`` runs in a fresh process (tests/own_process.py) unless it is that run."""
    if pyfuncitem.get_closest_marker("own_process") is None or in_own_process():
        return None
    run_alone(pyfuncitem.nodeid)
    return True


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
