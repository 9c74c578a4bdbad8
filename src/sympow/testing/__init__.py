"""Shared test and benchmark helpers: one tolerance table and one input factory.

``TOLERANCES`` and ``tolerance`` give the accepted error by dtype name, measured as in
``assert_close``: the largest absolute error relative to max |v| for normalised output and to
max |y_ref| otherwise.
``make_inputs`` builds seeded NumPy inputs (q, k, v and optional gates, rotary increments and
proportions) and ``convert`` moves them to another array namespace; ``make_offsets`` draws
packed-sequence offsets and ``per_sequence`` is the loop of separate calls that a packed call must equal.
``condition_numbers`` computes the state-path condition number c_i of math.md section 9,
``row_tolerances`` the per-row tolerance tau + gamma u_state c_i and ``assert_close_rows`` checks outputs
against it. Hypothesis strategies live in ``sympow.testing.strategies``, which is not imported here so
that Hypothesis stays optional.
"""

from .condition import condition_numbers
from .inputs import convert, make_inputs
from .packed import make_offsets, per_sequence
from .tolerances import (
    GAMMA,
    TOLERANCES,
    accumulation_dtype,
    assert_close,
    assert_close_rows,
    contract_state_dtype,
    relative_error,
    relative_errors_by_row,
    row_tolerances,
    state_path_gamma,
    to_numpy,
    tolerance,
    unit_roundoff,
)

__all__ = [
    "GAMMA",
    "TOLERANCES",
    "accumulation_dtype",
    "assert_close",
    "assert_close_rows",
    "condition_numbers",
    "contract_state_dtype",
    "convert",
    "make_inputs",
    "make_offsets",
    "per_sequence",
    "relative_error",
    "relative_errors_by_row",
    "row_tolerances",
    "state_path_gamma",
    "to_numpy",
    "tolerance",
    "unit_roundoff",
]

# The conformance suite (shipped cases, the checker, layout adapters, the pytest helper); pytest is
# imported only when conformance_parametrize is called.
from .adapters import adapt_layout
from .conformance import ConformanceError, Report, Result, check
from .pytest_plugin import conformance_parametrize
from .suite import CASES_VERSION, Case, all_tags, load_cases

__all__ += [
    "CASES_VERSION",
    "Case",
    "ConformanceError",
    "Report",
    "Result",
    "adapt_layout",
    "all_tags",
    "check",
    "conformance_parametrize",
    "load_cases",
]
