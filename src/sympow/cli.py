"""The ``sympow`` command line: ``validate``, ``backends`` and ``bench``.

The work is done in ``sympow.validation`` and ``sympow.benchmark``; this module parses arguments and
prints (rich tables, or JSON with ``--json``). Exit status: 0 on success, 1 when ``validate`` finds a
disagreement, 2 on bad arguments (with a usage message).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .testing.tolerances import TOLERANCES

STATUS_STYLE = {"pass": "green", "ok": "green", "fail": "bold red", "error": "bold red", "skip": "yellow"}


# ----------------------------------------------------------------------------------------------------------
# Argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _even_int(text: str) -> int:
    value = _positive_int(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"expected an even positive integer (rotary pairs), got {value}")
    return value


def _backend_names() -> list[str]:
    from . import backends

    return [backend.name for backend in backends.registered()]


def _variant_names() -> list[str]:
    from .validation import variant_names

    return variant_names()


# ----------------------------------------------------------------------------------------------------------
# Output helpers


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.2e}"


def _status(text: str) -> str:
    style = STATUS_STYLE.get(text, "")
    return f"[{style}]{text}[/{style}]" if style else text


@contextmanager
def _progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr; yields ``advance(description)``."""
    if not enabled:
        yield lambda description: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[step]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=total, step="")
        yield lambda description: progress.update(task, advance=1, step=description)


def _json_default(value: Any) -> Any:
    return str(value)


def _print_json(document: Any) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    sys.stdout.write(json.dumps(clean(document), indent=1, default=_json_default) + "\n")


# ----------------------------------------------------------------------------------------------------------
# validate


def _enable_jax_float64() -> None:
    """Real float64 in JAX for the reference comparisons (before any JAX array exists)."""
    if importlib.util.find_spec("jax") is None:
        return
    import jax

    jax.config.update("jax_enable_x64", True)


def cmd_validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import validation

    variants = args.variant
    kernels = args.kernels or not variants
    settings = validation.Settings(T=args.T, d=args.d, e=args.e)
    try:
        plan = validation.plan(
            args.backend,
            variants,
            args.dtype or validation.DEFAULT_DTYPES,
            settings,
            kernels=kernels,
            thorough=args.thorough,
        )
    except ValueError as error:
        parser.error(str(error))
    if any(library == "jax" for _, library, reason in plan.targets if reason is None):
        _enable_jax_float64()
    forms = args.form or list(validation.FORMS)
    with _progress(plan.steps, "validate", enabled=not args.no_progress) as advance:
        rows = validation.run(plan, forms=forms, advance=advance, workers=args.jobs)
    summaries = validation.summarize(rows)
    failed = [row for row in rows if row.status == "fail"]
    if args.json:
        _print_json(
            {
                "passed": not failed,
                "settings": {
                    "T": settings.T,
                    "d": settings.d,
                    "e": settings.e,
                    "batch": list(settings.batch),
                    "split": settings.split,
                    "chunk_size": settings.chunk_size,
                },
                "summary": [summary.as_dict() for summary in summaries],
                "rows": [row.as_dict() for row in rows],
            }
        )
        return 1 if failed else 0
    console = _console()
    if args.all:
        table = Table(title="sympow validate: every case")
        for column in (
            "backend",
            "library",
            "dtype",
            "form",
            "case",
            "output err",
            "resume err",
            "tol",
            "status",
            "detail",
        ):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(
                row.backend,
                row.library,
                row.dtype,
                row.form,
                row.case,
                _number(row.output_error),
                _number(row.resume_error),
                _number(row.tolerance),
                _status(row.status),
                row.detail,
            )
    else:
        table = Table(
            title=f"sympow validate against the float64 reference (T={settings.T}, d={settings.d}, "
            f"e={settings.e}, batch={settings.batch}, split at {settings.split})"
        )
        for column in (
            "backend",
            "library",
            "dtype",
            "form",
            "cases",
            "max output err",
            "max resume err",
            "tol",
            "worst case",
            "status",
            "detail",
        ):
            table.add_column(column, overflow="fold")
        for s in summaries:
            table.add_row(
                s.backend,
                s.library,
                s.dtype,
                s.form,
                str(s.cases),
                _number(s.output_error),
                _number(s.resume_error),
                _number(s.tolerance),
                s.worst_case,
                _status(s.status),
                s.detail,
            )
    console.print(table)
    measured = sum(row.status != "skip" for row in rows)
    if failed:
        console.print(
            f"[bold red]FAIL[/]: {len(failed)} of {measured} checked calls disagree with the reference"
        )
        return 1
    console.print(
        f"[green]OK[/]: all {measured} checked calls agree with the reference "
        f"({len(rows) - measured} skipped)"
    )
    return 0


# ----------------------------------------------------------------------------------------------------------
# backends


def cmd_backends(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import backends
    from .validation import libraries_of, library_available

    rows = []
    for entry in backends.available():
        libraries = libraries_of(entry) if "*" in entry.libraries else list(entry.libraries)
        here = [
            lib
            for lib in libraries
            if lib in ("numpy", "torch", "jax", "array_api_strict", "cupy") and library_available(lib) is None
        ]
        rows.append(
            {
                "name": entry.name,
                "available": entry.available,
                "reason": entry.reason,
                "libraries": list(entry.libraries),
                "libraries_here": here,
                "differentiable": entry.differentiable,
                "description": entry.description,
            }
        )
    try:
        chosen = backends.registry.requested_name(None)
    except ValueError as error:  # SYMPOW_BACKEND names no backend
        print(f"sympow backends: {error}", file=sys.stderr)
        return 2
    if args.json:
        _print_json({"default": chosen, "backends": rows})
        return 0
    table = Table(title="sympow backends (highest priority first)")
    for column in ("backend", "runs here", "why not", "takes", "importable here", "grad", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            _status("yes" if row["available"] else "no"),
            row["reason"] or "",
            ", ".join(row["libraries"]),
            ", ".join(row["libraries_here"]) or "-",
            "yes" if row["differentiable"] else "no",
            row["description"],
        )
    console = _console()
    console.print(table)
    console.print(
        f"default choice: {chosen!r} (from use() or ${backends.ENVIRONMENT_VARIABLE})"
        if chosen
        else "default choice: automatic, the highest-priority backend that supports the call"
    )
    return 0


# ----------------------------------------------------------------------------------------------------------
# bench


def _output_folder(text: str, parser: argparse.ArgumentParser) -> Path:
    """The folder --out names, made if missing, before anything is timed; a path that is a file (or where
    no folder can be made) is a bad argument: a usage error naming --out, exit status 2."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {text!r} is a file; expected a folder (or a path where one can be)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out: cannot make the folder {text!r}: {error.strerror or error}")
    return out


def cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from dataclasses import replace

    from . import benchmark

    settings = benchmark.QUICK if args.quick else benchmark.BenchSettings()
    changes: dict[str, Any] = {}
    if args.T:
        changes["Ts"] = tuple(sorted(set(args.T)))
    for name in ("d", "e", "repeats", "chunk_size", "dtype"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.form:
        changes["forms"] = tuple(args.form)
    settings = replace(settings, **changes)
    try:
        targets = benchmark.targets(args.backend, args.library)
    except ValueError as error:
        parser.error(str(error))
    out = _output_folder(args.out, parser)
    if any(library == "jax" for _, library, reason in targets if reason is None):
        _enable_jax_float64()
    total = len(targets) * len(benchmark.points(settings))
    with _progress(total, "bench", enabled=not args.no_progress) as advance:
        rows = benchmark.run(settings, args.backend, args.library, advance=advance)
    csv_path = benchmark.write_csv(rows, out / "bench.csv")
    title = (
        f"sympow bench: kernel {settings.kernel}, p={settings.power}, {settings.dtype}, d={settings.d}, "
        f"e={settings.e}, batch={settings.batch}"
    )
    png_path = benchmark.plot(rows, out / "bench.png", title)
    if args.json:
        _print_json({"csv": str(csv_path), "png": str(png_path), "rows": [row.as_dict() for row in rows]})
        return 0
    table = Table(title=title)
    for column in ("backend", "library", "form", "T", "ms per call", "status", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ms = "-" if row.seconds is None else f"{1e3 * row.seconds:.2f}"
        table.add_row(row.backend, row.library, row.form, str(row.T), ms, _status(row.status), row.detail)
    console = _console()
    console.print(table)
    console.print(f"wrote {csv_path} and {png_path}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# The parser


def build_parser() -> argparse.ArgumentParser:
    from .validation import FORMS

    parser = argparse.ArgumentParser(
        prog="sympow",
        description="Symmetric-power linear attention: validate backends, list them, time them.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dtypes = sorted(TOLERANCES)

    validate = commands.add_parser(
        "validate",
        help="every backend, form and variant against the float64 reference",
        description=(
            "Run every available backend (on every array library it takes that imports here), every form "
            "and every case (plain kernels with gates, rotary and proportions; the named variants) and "
            "compare with the float64 reference (reference backend, parallel form, NumPy float64), both "
            "in one call and split in two calls resumed from the state. Exit status 1 on any disagreement."
        ),
    )
    validate.add_argument(
        "--backend",
        action="append",
        choices=_backend_names(),
        metavar="NAME",
        help=f"only this backend (repeatable); one of {_backend_names()}",
    )
    validate.add_argument(
        "--variant",
        action="append",
        choices=_variant_names(),
        metavar="NAME",
        help=f"only this variant (repeatable; then no plain kernels unless --kernels); "
        f"one of {_variant_names()}",
    )
    validate.add_argument("--kernels", action="store_true", help="with --variant, also the plain kernels")
    validate.add_argument(
        "--dtype",
        action="append",
        choices=dtypes,
        metavar="DTYPE",
        help=f"dtype to test (repeatable; default float64); one of {dtypes}",
    )
    validate.add_argument("--form", action="append", choices=FORMS, help="only this form (repeatable)")
    validate.add_argument("-T", type=_positive_int, default=64, help="tokens per call (default 64)")
    validate.add_argument("-d", type=_even_int, default=8, help="head size, even (default 8)")
    validate.add_argument("-e", type=_positive_int, default=4, help="value size (default 4)")
    validate.add_argument(
        "--thorough",
        action="store_true",
        help="every kernel with every weight combination (slower, above all on JAX)",
    )
    validate.add_argument("--all", action="store_true", help="print every case, not one row per form")
    validate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    validate.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="worker processes (default: the number of CPUs)",
    )
    validate.add_argument("--no-progress", action="store_true", help="no progress bar")
    validate.set_defaults(handler=cmd_validate, command_parser=validate)

    backends = commands.add_parser(
        "backends",
        help="which backends can run here, and why not",
        description="List every registered backend: whether it can run here (and if not, why), the array "
        "libraries it takes, whether it is differentiable.",
    )
    backends.add_argument("--json", action="store_true", help="print JSON instead of a table")
    backends.set_defaults(handler=cmd_backends, command_parser=backends)

    bench = commands.add_parser(
        "bench",
        help="time every form and backend over a grid of T; CSV and PNG",
        description="Time every form of every available backend over sequence lengths T (median of "
        "repeats after a warm-up), with a progress bar; write bench.csv and bench.png to --out.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a small grid that finishes in well under a minute"
    )
    bench.add_argument(
        "--out", default="sympow-bench", metavar="DIR", help="output folder (default sympow-bench)"
    )
    bench.add_argument(
        "--backend",
        action="append",
        choices=_backend_names(),
        metavar="NAME",
        help="only this backend (repeatable)",
    )
    bench.add_argument(
        "--library",
        choices=["numpy", "torch", "jax", "array_api_strict", "cupy"],
        help="array library for backends that take several (default numpy)",
    )
    bench.add_argument("--form", action="append", choices=FORMS, help="only this form (repeatable)")
    bench.add_argument("-T", type=_positive_int, action="append", help="a sequence length (repeatable)")
    bench.add_argument("-d", type=_positive_int, help="head size")
    bench.add_argument("-e", type=_positive_int, help="value size")
    bench.add_argument("--chunk-size", type=_positive_int, help="chunk size of the chunked form")
    bench.add_argument("--repeats", type=_positive_int, help="timed calls per point")
    bench.add_argument("--dtype", choices=dtypes, help="input dtype (default float32)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(handler=cmd_bench, command_parser=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sympow`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args, args.command_parser))


if __name__ == "__main__":
    raise SystemExit(main())
