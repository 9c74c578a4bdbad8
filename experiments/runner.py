"""The shared harness of the experiments: arguments, training, a pool of workers with a progress bar,
CSV and PNG output.

A script describes its runs as a list of ``Job`` (a function and its keyword arguments, one per model,
setting and seed); ``run_jobs`` runs them, ``workers`` at a time (each a process with one torch thread:
on a 2-core machine two small models train faster side by side than one with two threads), shows a
progress bar, and returns each job's result row in the order of the jobs.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Job:
    """One training run: ``function(**arguments)`` returns a list of result rows (dicts)."""

    function: Callable[..., list[dict[str, Any]]]
    arguments: dict[str, Any] = field(default_factory=dict)
    label: str = ""


def arguments(description: str, *, seeds: int, lr: float, steps: int) -> argparse.ArgumentParser:
    """The options every experiment takes; a script adds its own before ``parse_args``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(seeds)), help="training seeds")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate of AdamW")
    parser.add_argument("--steps", type=int, default=steps, help="training steps per run")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the CSV and PNG")
    parser.add_argument("--tiny", action="store_true", help="a setting of seconds (the CI smoke run)")
    return parser


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _call(job: Job) -> list[dict[str, Any]]:
    return job.function(**job.arguments)


def run_jobs(jobs: list[Job], workers: int, title: str) -> list[dict[str, Any]]:
    """Every job's rows, in the order of ``jobs``; ``workers`` processes (1: in this process)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: list[list[dict[str, Any]] | None] = [None] * len(jobs)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task(title, total=len(jobs))
        if workers <= 1:
            _one_thread()
            for i, job in enumerate(jobs):
                progress.update(task, description=f"{title}: {job.label}")
                results[i] = _call(job)
                progress.advance(task)
        else:
            spawn = get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_one_thread) as pool:
                futures = {pool.submit(_call, job): i for i, job in enumerate(jobs)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update(task, description=f"{title}: {jobs[futures[future]].label} done")
                    progress.advance(task)
    return [row for rows in results for row in rows or []]


def train(
    model: Any,
    batches: Callable[[int], tuple[Any, Any]],
    *,
    steps: int,
    lr: float,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    options: dict[str, Any] | None = None,
) -> list[float]:
    """Train ``model`` (tokens -> logits) on ``batches(step) -> (inputs, labels)`` with AdamW, a linear
    warm-up over ``warmup`` steps (default 5% of them) then cosine decay to 10% of ``lr``, gradient
    clipping at 1, and cross-entropy over the labelled positions; the loss of every step."""
    import torch

    warmup = max(1, steps // 20) if warmup is None else warmup
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses = []
    model.train()
    for step in range(steps):
        inputs, labels = batches(step)
        logits = model(inputs, **(options or {}))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return losses


class Timer:
    """Seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def write_csv(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def summarise(rows: list[dict[str, Any]], by: tuple[str, ...], value: str) -> list[dict[str, Any]]:
    """Mean, sample standard deviation, min and max of ``value`` over the rows of each group ``by``."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(float(row[value]))
    out = []
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out.append({**dict(zip(by, key, strict=True)), "n": len(values), "mean": mean, "std": std,
                    "min": min(values), "max": max(values)})  # fmt: skip
    return out


def plot_lines(
    summary: list[dict[str, Any]],
    *,
    x: str,
    line: str,
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> Path:
    """One line per value of ``line``: the mean over seeds against ``x``, the band from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in sorted({row[line] for row in summary}):
        points = sorted((row for row in summary if row[line] == name), key=lambda row: row[x])
        xs = [row[x] for row in points]
        ax.plot(xs, [row["mean"] for row in points], marker="o", label=str(name))
        ax.fill_between(xs, [row["min"] for row in points], [row["max"] for row in points], alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{value:.4g}" if isinstance(value, float) else str(value) for value in row.values()))
    Console().print(table)
