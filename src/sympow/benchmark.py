"""Timing behind ``sympow bench``: every form of every backend over a grid of sequence lengths.

Each point is the median wall time of ``repeats`` calls of ``attention`` after one warm-up call (which
also pays any compilation), on inputs from the one input factory, with the device synchronised before
the clock stops. Results go to a CSV file and a log-log PNG plot (matplotlib, imported only here, with
the Agg canvas so that no display is needed). Timings are measurements, never assertions.
"""

from __future__ import annotations

import csv
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import backends as backend_registry
from .api import attention
from .testing.inputs import convert, make_inputs
from .validation import NAMESPACES, libraries_of, library_available

FORMS = ("parallel", "recurrent", "chunked")
PLOT_SIZE = (8.0, 5.0)  # inches
PLOT_DPI = 100  # so the PNG is 800 x 500 pixels


@dataclass(frozen=True)
class BenchSettings:
    """The grid: sequence lengths ``Ts``, head size d, value size e, batch axes, kernel, dtype, chunk size,
    timed repeats per point, and the longest T the (token by token) recurrent form is run at."""

    Ts: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    d: int = 32
    e: int = 32
    batch: tuple[int, ...] = (2,)
    kernel: str = "sympow"
    power: int = 2
    dtype: str = "float32"
    chunk_size: int = 64
    repeats: int = 3
    max_recurrent_T: int = 1024
    forms: tuple[str, ...] = FORMS
    seed: int = 0


QUICK = BenchSettings(Ts=(64, 128, 256), d=16, e=16, repeats=2, max_recurrent_T=256, chunk_size=32)


@dataclass(frozen=True)
class Timing:
    """One point of the grid: the median seconds of a call, or why it was not timed."""

    backend: str
    library: str
    form: str
    T: int
    seconds: float | None
    status: str
    detail: str = ""
    settings: BenchSettings = field(repr=False, default=BenchSettings())

    def as_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "backend": self.backend,
            "library": self.library,
            "form": self.form,
            "kernel": s.kernel,
            "power": s.power,
            "dtype": s.dtype,
            "batch": "x".join(map(str, s.batch)) or "1",
            "T": self.T,
            "d": s.d,
            "e": s.e,
            "chunk_size": s.chunk_size,
            "repeats": s.repeats,
            "seconds": self.seconds,
            "tokens_per_second": None if not self.seconds else self.T * _batch_size(s) / self.seconds,
            "status": self.status,
            "detail": self.detail,
        }


CSV_FIELDS = (
    "backend",
    "library",
    "form",
    "kernel",
    "power",
    "dtype",
    "batch",
    "T",
    "d",
    "e",
    "chunk_size",
    "repeats",
    "seconds",
    "tokens_per_second",
    "status",
    "detail",
)


def _batch_size(settings: BenchSettings) -> int:
    size = 1
    for n in settings.batch:
        size *= n
    return size


def targets(
    backends: Sequence[str] | None = None, library: str | None = None
) -> list[tuple[str, str, str | None]]:
    """(backend, library, why it cannot run or None) per backend: the backend's own library, or numpy for
    one that takes any (``library`` overrides where the backend takes it)."""
    entries = {entry.name: entry for entry in backend_registry.available()}
    names = list(entries) if backends is None else list(backends)
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise ValueError(f"backends must be among {sorted(entries)}, got {unknown}")
    out = []
    for name in names:
        entry = entries[name]
        if not entry.available:
            out.append((name, "-", entry.reason or "unavailable"))
            continue
        libraries = libraries_of(entry)
        if library is not None:
            if library not in libraries:
                out.append((name, library, f"it takes {list(entry.libraries)} arrays, not {library}"))
                continue
            chosen = library
        else:
            chosen = "numpy" if "*" in entry.libraries else (libraries[0] if libraries else "-")
        out.append((name, chosen, library_available(chosen) if chosen in NAMESPACES else "no known library"))
    return out


def points(settings: BenchSettings) -> list[tuple[str, int]]:
    """(form, T) pairs of the grid, the recurrent form only up to ``max_recurrent_T``."""
    return [
        (form, T)
        for form in settings.forms
        for T in settings.Ts
        if form != "recurrent" or T <= settings.max_recurrent_T
    ]


def synchronize(y: Any) -> None:
    """Wait until ``y`` is computed (JAX dispatches asynchronously, GPUs run asynchronously)."""
    if hasattr(y, "block_until_ready"):
        y.block_until_ready()
        return
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(y, torch.Tensor) and y.is_cuda:
        torch.cuda.synchronize(y.device)
        return
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(y, cupy.ndarray):
        y.device.synchronize()


def time_point(backend: str, library: str, form: str, T: int, settings: BenchSettings) -> Timing:
    """The median time of one (backend, library, form, T) point."""
    xp = importlib.import_module(NAMESPACES[library])
    inputs = make_inputs(batch=settings.batch, T=T, d=settings.d, e=settings.e, seed=settings.seed)
    arrays = convert(inputs, xp, settings.dtype)

    def call() -> None:
        y = attention(
            arrays["q"],
            arrays["k"],
            arrays["v"],
            kernel=settings.kernel,
            power=settings.power,
            form=form,
            chunk_size=settings.chunk_size,
            backend=backend,
        )
        synchronize(y)

    try:
        call()  # warm-up: compilation, caches
        times = []
        for _ in range(settings.repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    except Exception as exc:  # a backend that cannot run a point is reported in the table, not raised
        return Timing(
            backend, library, form, T, None, "error", f"{type(exc).__name__}: {exc}"[:200], settings
        )
    return Timing(backend, library, form, T, statistics.median(times), "ok", "", settings)


def run(
    settings: BenchSettings,
    backends: Sequence[str] | None = None,
    library: str | None = None,
    advance: Callable[[str], None] | None = None,
) -> list[Timing]:
    """Every point of the grid on every target; ``advance(label)`` after each point."""
    rows = []
    for backend, lib, reason in targets(backends, library):
        for form, T in points(settings):
            if reason is not None:
                rows.append(Timing(backend, lib, form, T, None, "skip", reason, settings))
            else:
                rows.append(time_point(backend, lib, form, T, settings))
            if advance is not None:
                advance(f"{backend} {lib} {form} T={T}")
    return rows


def write_csv(rows: Sequence[Timing], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_dict())
    return path


def plot(rows: Sequence[Timing], path: Path, title: str = "") -> Path:
    """A log-log plot of seconds against T, one line per (backend, library, form), saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    lines: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for row in rows:
        if row.seconds is not None:
            lines.setdefault((row.backend, row.library, row.form), []).append((row.T, row.seconds))
    for (backend, library, form), values in sorted(lines.items()):
        values.sort()
        axes.plot(
            [T for T, _ in values], [s for _, s in values], marker="o", label=f"{backend} ({library}) {form}"
        )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("sequence length T")
    axes.set_ylabel("seconds per call (median)")
    axes.set_title(title or "sympow: time per call")
    axes.grid(True, which="both", alpha=0.3)
    if lines:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=PLOT_DPI)
    return path
