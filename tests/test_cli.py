"""The ``sympow`` command line: validate, backends, bench, and usage errors (exit status 2)."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sympow import benchmark
from sympow.backends import Backend, register
from sympow.backends import registry as backend_registry
from sympow.cli import main
from sympow.spec import run as run_reference
from tests.backends_here import general_backends

FORMS = ("parallel", "recurrent", "chunked")


def _available():
    return {entry.name: entry for entry in general_backends()}


@pytest.mark.own_process
def test_validate_exits_0_with_a_row_per_backend_and_form(capsys):
    status = main(
        [
            "validate",
            "--variant",
            "based",
            "-T",
            "16",
            "--jobs",
            "1",
            "--json",
            "--no-progress",
            "--form",
            "parallel",
            "--form",
            "recurrent",
            "--form",
            "chunked",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["passed"]
    seen = {(row["backend"], row["form"]) for row in out["summary"] if row["status"] == "pass"}
    for name in _available():
        for form in FORMS:
            assert (name, form) in seen, (name, form)
    libraries = {row["library"] for row in out["summary"] if row["backend"] == "reference"}
    assert {"numpy", "array_api_strict"} <= libraries
    assert {row["case"] for row in out["rows"]} == {"variant:based"}


@pytest.mark.own_process
def test_validate_prints_a_table(capsys):
    status = main(
        [
            "validate",
            "--variant",
            "based",
            "--backend",
            "reference",
            "-T",
            "8",
            "--jobs",
            "1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    table_rows = [line for line in out.splitlines() if line.startswith("│ reference")]
    for form in FORMS:
        assert any(form in line and "pass" in line for line in table_rows), form
    assert "OK" in out


# A deliberately wrong backend: the reference plus one, registered for one test.
def supports(request):
    return None


def run(request, form):
    y, state = run_reference(request, form)
    return y + 1.0, state


@pytest.fixture
def broken_backend():
    register(
        Backend(
            name="off-by-one",
            module=__name__,
            libraries=("numpy",),
            requires=(),
            priority=-10,
            differentiable=False,
            description="wrong on purpose",
        )
    )
    yield "off-by-one"
    backend_registry._REGISTRY.pop("off-by-one")


def test_validate_exits_1_on_a_disagreement(capsys, broken_backend):
    status = main(
        [
            "validate",
            "--backend",
            broken_backend,
            "--variant",
            "based",
            "-T",
            "8",
            "--jobs",
            "1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL" in out and "off-by-one" in out


def test_backends_lists_what_runs_here_and_why_not(capsys):
    assert main(["backends", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in listing["backends"]}
    assert by_name["reference"]["available"] and by_name["reference"]["reason"] is None
    for row in listing["backends"]:
        assert row["available"] or row["reason"]
    assert main(["backends"]) == 0
    assert "reference" in capsys.readouterr().out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_bench_quick_writes_a_csv_and_a_png(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    with open(tmp_path / "bench.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) == set(benchmark.CSV_FIELDS)
    timed = [row for row in rows if row["status"] == "ok"]
    assert {(row["backend"], row["form"]) for row in timed} >= {("reference", form) for form in FORMS}
    assert all(float(row["seconds"]) > 0 for row in timed)
    width, height = _png_size(tmp_path / "bench.png")
    assert (width, height) == (800, 500)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "bench.png")
    assert image.shape[:2] == (500, 800) and np.ptp(image) > 0  # not blank
    assert "bench.csv" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["validate", "-T", "0"],
        ["validate", "-T", "many"],
        ["validate", "-d", "7"],
        ["validate", "--backend", "no-such-backend"],
        ["validate", "--dtype", "float7"],
        ["validate", "--variant", "no-such-variant"],
        ["bench", "--form", "sideways"],
        ["backends", "--verbose"],
    ],
    ids=lambda argv: " ".join(argv) or "no command",
)
def test_bad_arguments_give_usage_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert "usage: sympow" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_bench_out_that_cannot_be_a_folder_is_a_usage_error(tmp_path, capsys, where):
    """--out naming an existing file was a FileExistsError traceback with exit status 1 (issue 12): a
    usage error naming --out, exit status 2, before anything is timed."""
    existing = tmp_path / "taken"
    existing.write_text("not a folder")
    out = existing if where == "file" else existing / "inside"
    with pytest.raises(SystemExit) as raised:
        main(["bench", "--quick", "--out", str(out), "--no-progress"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "usage: sympow bench" in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("sympow bench: error: argument --out:"), err
    assert existing.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["validate", "backends", "bench"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    assert f"usage: sympow {command}" in capsys.readouterr().out


def test_console_script():
    script = shutil.which("sympow", path=str(Path(sys.executable).parent)) or shutil.which("sympow")
    assert script is not None, "the console script sympow is not installed"
    done = subprocess.run([script, "backends", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert any(row["name"] == "reference" for row in json.loads(done.stdout)["backends"])
    bad = subprocess.run(
        [script, "validate", "--dtype", "float7"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "usage: sympow validate" in bad.stderr


@pytest.mark.own_process
def test_validate_covers_packed_sequences(capsys):
    """Every plain kernel packed (cu_seqlens), in every form, passes on the reference and the torch
    backend: a packed call, then a second resumed from its per-sequence States."""
    status = main(["validate", "--backend", "reference", "--backend", "torch", "-T", "24", "--jobs", "1",
                   "--json", "--no-progress", "--variant", "based", "--kernels"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["passed"]
    packed = [row for row in out["rows"] if row["case"].endswith("/packed")]
    kernels = {row["case"] for row in packed}
    assert len(kernels) == 5
    torch_rows = [row for row in packed if row["backend"] == "torch"]
    if "torch" in _available():
        assert {row["form"] for row in torch_rows if row["status"] == "pass"} == set(FORMS)
    assert all(row["status"] == "pass" for row in packed if row["library"] in ("numpy", "torch")), packed
