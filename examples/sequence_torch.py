"""One training step of a tiny model under DistributedDataParallel, one sequence split over 2 gloo processes.

The model projects a sequence x [T, width] to q, k, v of 2 heads with one ``nn.Linear`` and runs
``sympow.attention`` with ``sequence_group=dist.group.WORLD``: rank r feeds tokens [cuts[r], cuts[r+1]) of
one sequence (slices of different lengths are allowed on torch). The model is wrapped in
``torch.nn.parallel.DistributedDataParallel``; each rank's loss is its slice's part of the whole sequence's
mean squared error, so the sequence's loss is the *sum* of the ranks' losses.

Gradient semantics: DDP *averages* the parameter gradients over the ranks, while the sequence's gradient
is the *sum* of the ranks' (each rank's backward already carries, through the sequence group's
collectives, its slice's share of every parameter's gradient). So each rank multiplies its loss by the
world size before ``backward``; the averaged gradient is then the whole sequence's. After one backward
and one SGD step, every rank compares the loss, the gradient and the updated weight with the same step
in one process (no group, the whole sequence). See docs/sequence.md.

    python examples/sequence_torch.py
"""

from __future__ import annotations

import datetime
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sympow

WORLD, T, WIDTH, HEADS, D_HEAD = 2, 512, 16, 2, 8
CUTS = (0, 320, T)  # rank r holds tokens CUTS[r]:CUTS[r+1] (unequal slices)
LEARNING_RATE, TIMEOUT = 0.1, 120


class TinyAttention(nn.Module):
    """x [T, WIDTH] -> y [HEADS, T, D_HEAD]: a learned q/k/v projection, then sympow attention."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * HEADS * D_HEAD, bias=False)

    def forward(self, x: torch.Tensor, sequence_group: dist.ProcessGroup | None = None) -> torch.Tensor:
        qkv = self.qkv(x).reshape(x.shape[0], 3, HEADS, D_HEAD).permute(1, 2, 0, 3)  # [3, HEADS, T, D]
        return sympow.attention(
            qkv[0], qkv[1], qkv[2], power=2, form="chunked", chunk_size=32, backend="torch",
            sequence_group=sequence_group,
        )  # fmt: skip


def data() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The whole sequence x, its target, and the initial weights: the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(T, WIDTH, generator=generator)
    target = torch.randn(HEADS, T, D_HEAD, generator=generator)
    torch.manual_seed(0)
    return x, target, TinyAttention().state_dict()


def step(model: nn.Module, loss_fn: object) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One backward and SGD step: (loss, the weight's gradient, the updated weight)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    optimizer.zero_grad()
    loss = loss_fn()
    loss.backward()
    weight = dict(model.named_parameters())["module.qkv.weight" if hasattr(model, "module") else "qkv.weight"]
    grad = weight.grad.clone()
    optimizer.step()
    return float(loss.detach()), grad, weight.detach().clone()


def member(rank: int, path: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{path}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT),
    )  # fmt: skip
    torch.set_num_threads(1)
    x, target, weights = data()
    count = target.numel()  # the mean is over the whole sequence's outputs

    # the reference: one process, the whole sequence (no group, so no collective)
    reference = TinyAttention()
    reference.load_state_dict(weights)
    loss_1, grad_1, weight_1 = step(reference, lambda: torch.sum((reference(x) - target) ** 2) / count)

    # the sequence-parallel step: this rank's slice, its share of the sequence's loss, times WORLD (DDP
    # averages the gradients over ranks; the sequence's gradient is their sum)
    local = TinyAttention()
    local.load_state_dict(weights)
    model = nn.parallel.DistributedDataParallel(local)
    lo, hi = CUTS[rank], CUTS[rank + 1]
    x_slice, target_slice = x[lo:hi], target[:, lo:hi]

    def slice_loss() -> torch.Tensor:
        y = model(x_slice, sequence_group=dist.group.WORLD)  # [HEADS, hi - lo, D_HEAD]
        return WORLD * torch.sum((y - target_slice) ** 2) / count

    scaled, grad, weight = step(model, slice_loss)
    whole = torch.tensor(scaled / WORLD, dtype=torch.float64)
    dist.all_reduce(whole)  # the sequence's loss: the sum of the slices'

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    errors = {
        "loss": abs(float(whole) - loss_1) / abs(loss_1), "gradient": relative(grad, grad_1),
        "updated weight": relative(weight, weight_1),
    }  # fmt: skip
    ok = max(errors.values()) < 1e-5  # float32
    line = (
        f"rank {rank}: tokens {lo}:{hi}, loss {float(whole):.7f} (one process {loss_1:.7f}); relative "
        + ", ".join(f"{name} {err:.1e}" for name, err in errors.items())
        + ("  OK" if ok else "  FAILED")
    )
    for turn in range(WORLD):  # one rank at a time
        if turn == rank:
            print(line, flush=True)
        dist.barrier()
    dist.destroy_process_group()
    if not ok:
        raise SystemExit(1)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        context = mp.spawn(member, args=(f"{folder}/rendezvous",), nprocs=WORLD, join=False)
        deadline = time.monotonic() + TIMEOUT
        while not context.join(timeout=5):  # True once every rank has exited; raises if one failed
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise SystemExit(f"FAILED: the ranks did not finish within {TIMEOUT} s")
    print("OK: with the loss times the world size, the DDP gradients and SGD update equal one process's")


if __name__ == "__main__":
    main()
