"""Every conformance case as a test of another project's suite, in a few lines::

    from sympow.testing import check, conformance_parametrize

    @conformance_parametrize()
    def test_conformance(conformance_case):
        check(my_attention, cases=[conformance_case], dtype="float32")

Each case becomes one test, with the case's name as its id, so a failure names the case. pytest is
imported only when ``conformance_parametrize`` is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .suite import CASES_VERSION, Case, load_cases


def conformance_parametrize(
    argname: str = "conformance_case",
    *,
    version: int = CASES_VERSION,
    names: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    exclude_tags: Iterable[str] | None = None,
) -> Any:
    """``pytest.mark.parametrize(argname, cases, ids=names)`` over the shipped cases, selected as by
    ``load_cases`` (names, required tags, excluded tags)."""
    import pytest

    cases: list[Case] = load_cases(version=version, names=names, tags=tags, exclude_tags=exclude_tags)
    return pytest.mark.parametrize(argname, cases, ids=[case.name for case in cases])
