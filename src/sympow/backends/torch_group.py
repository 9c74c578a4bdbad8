"""A torch.distributed process group as a sequence group (``spec.sequence.Group``).

Each collective is an autograd Function whose backward is its adjoint, so every member's gradients flow
through the exchange: all-gather <-> reduce-scatter (written as an all-reduce of the gradient stack and
this member's slice, which gloo supports), a shift to the next member <-> a shift back, a broadcast of
the last member's array <-> the sum of every member's gradient on the last member. Collectives run on
contiguous tensors of the state's dtype (float32 or float64), under the group's own timeout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..spec.sequence import count


class ProcessGroup:
    """The members of ``group`` (a ``torch.distributed.ProcessGroup``): size P and this process's rank."""

    eager_backward = True  # each process runs its own autograd: see ``spec.sequence.exchange_scan``

    def __init__(self, group: Any) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def global_rank(self, member: int) -> int:
        return dist.get_global_rank(self.group, member)

    def signatures(self, signature: list[int]) -> list[list[int]]:
        """Every member's ``signature`` (one all-gather of int64s, outside autograd)."""
        mine = torch.tensor(signature, dtype=torch.int64)
        if dist.get_backend(self.group) == "nccl":
            mine = mine.cuda()
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(parts, mine, group=self.group)
        return [part.tolist() for part in parts]

    def all_gather(self, x: Any) -> Any:
        count("all_gather", self.size, x.nbytes)
        return _AllGather.apply(x, self)

    def shift(self, x: Any, s: int) -> Any:
        count("shift", self.size, x.nbytes, s)
        return _Shift.apply(x, self, s)

    def last(self, x: Any) -> Any:
        count("last", self.size, x.nbytes)
        return _Last.apply(x, self)


def _send_receive(x: torch.Tensor, group: ProcessGroup, s: int) -> torch.Tensor:
    """Send x to member rank + s, receive from rank - s (zeros where there is none); s may be negative."""
    x = x.contiguous()
    received = torch.zeros_like(x)
    operations = []
    destination, source = group.rank + s, group.rank - s
    if 0 <= destination < group.size:
        operations.append(dist.P2POp(dist.isend, x, group.global_rank(destination), group.group))
    if 0 <= source < group.size:
        operations.append(dist.P2POp(dist.irecv, received, group.global_rank(source), group.group))
    if operations:
        for request in dist.batch_isend_irecv(operations):
            request.wait()
    return received


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(group.size)]
        dist.all_gather(parts, x.contiguous(), group=group.group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group.group)
        return grad[ctx.group.rank], None


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup, s: int) -> torch.Tensor:
        ctx.group, ctx.s = group, s
        return _send_receive(x, group, s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _send_receive(grad, ctx.group, -ctx.s), None, None


class _Last(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = x.detach().clone().contiguous()
        dist.broadcast(out, src=group.global_rank(group.size - 1), group=group.group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group.group)
        last = ctx.group.rank == ctx.group.size - 1
        return (grad if last else torch.zeros_like(grad)), None
