"""The backend registry: what each backend takes, and which one a call runs on.

A backend is a module with ``supports(request) -> str | None`` (None, or why not) and
``run(request, form) -> (y, state)``. It is named here with the array libraries it takes and the
packages it needs, and never imported until an array of one of its libraries arrives (as einops and
opt_einsum find their backends). Choice, strongest first: the ``backend=`` argument, ``use(name)`` (for
the calls of its own thread), the environment variable SYMPOW_BACKEND, then automatic: the
highest-priority backend that takes the arrays' library and supports the request, with the reference
last. Selection is plain Python over shapes and options, which torch.compile traces (a compiled graph
keeps the backend it was traced with).

A named backend (by any of the three) runs a request exactly when ``supports`` accepts it: one rule,
whichever way it was named. A module may also define ``automatic(request) -> str | None``, why it should
not be picked when no backend is named although it supports the request (the "numba" backend under the
CUDA simulator: NumPy arrays would all go to that slow path); automatic choice alone consults it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

ENVIRONMENT_VARIABLE = "SYMPOW_BACKEND"


@dataclass(frozen=True)
class Backend:
    """One registered backend.

    ``libraries``: the array libraries it takes ("*" for any namespace of the standard); ``requires``:
    packages it imports; ``priority``: higher wins in automatic choice; ``module``: where ``supports``,
    ``run`` and optionally ``unavailable() -> str | None`` (why it cannot run here) live.
    """

    name: str
    module: str
    libraries: tuple[str, ...]
    requires: tuple[str, ...]
    priority: int
    differentiable: bool
    description: str

    def takes(self, library: str) -> bool:
        return "*" in self.libraries or library in self.libraries

    def load(self) -> ModuleType:
        # sys.modules first: torch.compile traces a lookup there, not an import
        return sys.modules.get(self.module) or importlib.import_module(self.module)

    def unavailable(self) -> str | None:
        """None if this backend can run here, else the reason."""
        for package in self.requires:
            if importlib.util.find_spec(package) is None:
                return f"package {package!r} is not installed"
        probe = getattr(self.load(), "unavailable", None)
        return probe() if probe is not None else None


_REGISTRY: dict[str, Backend] = {}
_chosen = threading.local()  # .names: the stack of use() blocks in force in this thread (the innermost last);
# a thread-local rather than a ContextVar, whose get torch.compile cannot trace (a compiled decoding step
# calls attention, which selects a backend)


def register(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _REGISTRY[backend.name] = backend


def registered() -> list[Backend]:
    return sorted(_REGISTRY.values(), key=lambda b: -b.priority)


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    reason: str | None
    libraries: tuple[str, ...]
    differentiable: bool
    description: str


def available() -> list[Availability]:
    """Every registered backend, whether it can run here and, if not, why."""
    rows = []
    for backend in registered():
        reason = backend.unavailable()
        rows.append(
            Availability(backend.name, reason is None, reason, backend.libraries,
                         backend.differentiable, backend.description)
        )  # fmt: skip
    return rows


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the calls inside the block on backend ``name`` (unless ``backend=`` says otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"backend must be one of {sorted(_REGISTRY)}, got {name!r}")
    names = _chosen.__dict__.setdefault("names", [])
    names.append(name)
    try:
        yield
    finally:
        names.pop()


def requested_name(argument: Any) -> str | None:
    """The explicit choice in force: the argument, else use(), else SYMPOW_BACKEND, else None.

    Raises TypeError for an argument that is not a str or None, and ValueError for an empty or unknown
    name, naming where it came from (the ``backend`` argument or the environment variable)."""
    if argument is not None:
        if not isinstance(argument, str):
            raise TypeError(
                f"backend must be a registered backend name (str) or None, got {argument!r} of type "
                f"{type(argument).__name__}"
            )
        return _known(argument, "backend")
    names = getattr(_chosen, "names", None)
    if names:
        return names[-1]
    variable = os.environ.get(ENVIRONMENT_VARIABLE)
    if variable:
        return _known(variable, f"the environment variable {ENVIRONMENT_VARIABLE}")
    return None


def _known(name: str, source: str) -> str:
    if name not in _REGISTRY:
        raise ValueError(f"{source} must name one of the backends {sorted(_REGISTRY)}, got {name!r}")
    return name


def select(request: Any, argument: Any = None) -> tuple[Backend, ModuleType]:
    """The backend that runs ``request``, or ValueError saying why the named one cannot and what can."""
    library = request.library
    name = requested_name(argument)
    if name is not None:
        backend = _REGISTRY[name]
        reason = _refusal(backend, request, library)
        if reason is not None:
            working = [b.name for b in registered() if _refusal(b, request, library) is None]
            raise ValueError(f"backend {name!r} cannot run this call: {reason}; these can: {working}")
        return backend, backend.load()
    for backend in registered():
        if _refusal(backend, request, library) is None and _declined(backend, request) is None:
            return backend, backend.load()
    reasons = [f"{b.name}: {_refusal(b, request, library)}" for b in registered() if b.takes(library)]
    raise ValueError(f"no registered backend runs this call on {library} arrays ({'; '.join(reasons)})")


def _refusal(backend: Backend, request: Any, library: str) -> str | None:
    """Why ``backend`` cannot run ``request`` (its library, availability, ``supports``), or None."""
    if not backend.takes(library):
        return f"it takes {list(backend.libraries)} arrays, not {library}"
    reason = backend.unavailable()
    if reason is not None:
        return reason
    module = backend.load()
    if getattr(request, "sequence_group", None) is not None and not hasattr(module, "SEQUENCE_GROUP"):
        return "it has no collectives for sequence_group (the torch and jax backends have)"
    return module.supports(request)


def _declined(backend: Backend, request: Any) -> str | None:
    """Why a backend that supports ``request`` is still not chosen automatically (its ``automatic``)."""
    automatic = getattr(backend.load(), "automatic", None)
    return None if automatic is None else automatic(request)
