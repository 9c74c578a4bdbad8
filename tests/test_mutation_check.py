"""benchmarks/mutation_check.py: its mutants are well formed and up to date, its copies import themselves.

Cheap checks only (no mutant is run): a source edit that moves a mutant's snippet fails here, so that the
mutant is brought up to date with the code it guards.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "mutation_check.py"
if not SCRIPT.is_file():  # e.g. inside one of the script's own copies, which hold src/ and tests/ only
    pytest.skip("benchmarks/mutation_check.py is not here", allow_module_level=True)


def load_script():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_check", module)
    spec.loader.exec_module(module)
    return module


mc = load_script()


def test_names_are_unique_and_the_list_is_long_enough():
    names = [m.name for m in mc.MUTANTS]
    assert len(names) == len(set(names))
    assert len(names) >= 13


@pytest.mark.parametrize("mutant", mc.MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_to_the_current_source(mutant):
    """Found exactly ``count`` times (else the script reports it STALE), and the edit changes the source."""
    source = (ROOT / mutant.path).read_text()
    assert mutant.apply(source) != source
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).exists(), f"{mutant.name}: no test file {test}"


def test_a_missing_snippet_is_stale():
    mutant = mc.Mutant("nowhere", "spec/steps.py", "no such line", "x", ("tests/spec",), "none")
    with pytest.raises(mc.StaleMutant, match="found 0 times"):
        mutant.apply("some source")
    assert "found 0 times" in mc.check_stale([mutant], mc.Snapshot())["nowhere"]


@pytest.mark.parametrize(
    ("returncode", "killed"), [(0, False), (1, True), (2, True), (5, False), (None, True), (4, False)]
)
def test_verdicts(returncode, killed):
    """A failed test, a collection error or a timeout kills; passing, or no test selected, survives."""
    outcome = mc.Outcome(returncode, "FAILED tests/x.py::test_y - AssertionError\n1 failed in 0.1s", 0.1)
    assert outcome.killed is killed
    assert outcome.first_failure == "tests/x.py::test_y"


def test_a_copy_imports_its_own_package(tmp_path):
    settings = mc.Settings(mc.Snapshot(), timeout=60.0, profile="ci", jobs=1)
    mc.Snapshot().copy_to(tmp_path)
    assert (tmp_path / "src" / "sympow" / "__init__.py").is_file()
    assert not list(tmp_path.rglob("__pycache__"))
    mc.verify_import(tmp_path, settings)  # returns, does not exit


def test_verify_import_aborts_when_the_copy_does_not_win(tmp_path):
    """A copy without src/sympow imports the editable install instead: the script must refuse."""
    (tmp_path / "src").mkdir()
    settings = mc.Settings(mc.Snapshot(), timeout=60.0, profile="ci", jobs=1)
    with pytest.raises(SystemExit, match="not the copy"):
        mc.verify_import(tmp_path, settings)


def test_regex_and_repeated_snippets():
    regex = mc.Mutant("r", "spec/steps.py", r"eps\s*>\s*0", "eps > 1", (), "", regex=True)
    assert regex.apply("if eps >  0:") == "if eps > 1:"
    twice = mc.Mutant("t", "spec/steps.py", "a + b", "a - b", (), "", count=2)
    assert twice.apply("a + b; a + b") == "a - b; a - b"
    with pytest.raises(mc.StaleMutant, match="found 1 times"):
        twice.apply("a + b")
