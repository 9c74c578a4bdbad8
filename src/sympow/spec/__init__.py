"""The backend-agnostic reference: array API calls only, no framework imported.

``run(request, form)`` computes one validated request in one form; it is the "reference" backend and the
float64 oracle every other backend and kernel is compared against.
"""

from __future__ import annotations

from typing import Any

from . import packed, sequence
from .checks import FORMS, Request, validate
from .executor import REFERENCE, Executor
from .forms import FORMS as FORM_FUNCTIONS
from .forms import choose_form, choose_packed_form
from .kernel import KERNELS, Kernel, make_kernel
from .poison import poisoned
from .prepare import prepare
from .state import State

__all__ = [
    "FORMS", "KERNELS", "REFERENCE", "Executor", "Kernel", "Request", "State", "choose_form",
    "make_kernel", "resolve_form",
    "run", "validate",
]  # fmt: skip


def resolve_form(request: Request) -> str:
    """The request's form, with 'auto' resolved by the FLOP model (for packed sequences whose starts were
    read, ``Request.packed_starts``, by the cost of the blocks the parallel form builds for them)."""
    if request.form != "auto":
        return request.form
    if request.packed_starts is not None:
        return choose_packed_form(
            request.packed_starts, request.T, request.d, request.e, request.feature_size, request.chunk_size
        )
    return choose_form(request.T, request.d, request.e, request.feature_size, request.chunk_size)


def run(request: Request, form: str, executor: Executor = REFERENCE) -> tuple[Any, State | None]:
    """(y in the input dtype, final state or None) of ``request`` computed in ``form`` by ``executor``."""
    if request.sequence_group is not None:  # poisoned there, with the flags of every member
        return sequence.run(request, form, executor, request.sequence_exchange)
    if request.cu_seqlens is not None:
        y, state = packed.run(request, form, executor)
    else:
        y, state = FORM_FUNCTIONS[form](prepare(request, executor), request.return_state)
    return poisoned(request, request.xp.astype(y, request.dtype), state)
