"""PyTorch backend: an executor of the one algorithm in spec/ (layout.md), on CPU and CUDA.

The forms are the specification's, run with ``array_api_compat.torch``. This module supplies only what
differs by framework:

- the loop over chunks and tokens: the spec's Python loop over ``unbind`` slices (one stack in the
  gradient), which ``torch.compile`` unrolls into one graph;
- the compile hook: the spec's static tables (``spec.static.STATIC``: feature orders, block layouts,
  coefficients; plain Python data) are marked ``torch.compiler.assume_constant_result``, so a compiled
  graph calls them once at trace time instead of tracing their Python;
- device and dtype rules: CPU and CUDA tensors of float16, bfloat16, float32 and float64; the state path
  in ``request.state_dtype`` (math.md 9), as on every backend.

Everything after validation (``forward``) is tensor code: differentiable (autograd, gradcheck) and
compiled by ``torch.compile(fullgraph=True)``. So is a whole call of ``sympow.attention``, validation and
the registry's choice included (they read shapes and options, and skip the value checks of traced
arrays, which ``spec.poison`` then carries as NaN): a decoding step compiles into one graph
(examples/decode.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ..spec import Executor, Request, State
from ..spec import run as run_spec
from ..spec.static import STATIC

DEVICES = ("cpu", "cuda")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SEQUENCE_GROUP = "a torch.distributed ProcessGroup"


def _process_group(group: Any) -> Any:
    from .torch_group import ProcessGroup

    return ProcessGroup(group)


EXECUTOR = Executor("torch", group=_process_group)

for _table in STATIC:
    torch.compiler.assume_constant_result(_table)


def supports(request: Request) -> str | None:
    """None if this backend computes ``request``: every kernel, weight and form, on CPU or CUDA."""
    if request.q.device.type not in DEVICES:
        return f"device {request.q.device.type!r} is not one of {list(DEVICES)}"
    if request.dtype not in DTYPES:
        return f"dtype {request.dtype} is not one of {[str(t) for t in DTYPES]}"
    if isinstance(request.sequence_group, str):
        return f"sequence_group must be {SEQUENCE_GROUP} on torch, got the name {request.sequence_group!r}"
    return None


def run(request: Request, form: str) -> tuple[Any, State | None]:
    return forward(request, form)


def forward(request: Request, form: str) -> tuple[Any, State | None]:
    """(y in the inputs' dtype, State or None) of a validated request: tensor code only, which
    ``torch.compile(fullgraph=True)`` traces whole (see tests/backends/test_torch_native.py)."""
    return run_spec(request, form, EXECUTOR)
