"""The reference backend: the array-API specification itself, on any namespace of the standard."""

from __future__ import annotations

from typing import Any

from ..spec import Request, State
from ..spec import run as run_reference


def supports(request: Request) -> str | None:
    """The reference computes every request."""
    return None


def run(request: Request, form: str) -> tuple[Any, State | None]:
    return run_reference(request, form)
