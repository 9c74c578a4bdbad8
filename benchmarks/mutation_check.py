"""Mutation check: plant realistic bugs in a copy of the package and see whether the tests notice.

Each mutant in ``MUTANTS`` is one small edit of one file under src/sympow (an exact snippet and its
replacement, or a regular expression), the bug it stands for, and the few test files (pytest node ids and
a ``-k`` expression allowed) that should fail because of it. For every mutant the script copies the
repository (src/, tests/, pyproject.toml and the root files pytest reads; never .venv or .git) into a
temporary directory, applies the edit there and runs

    python -m pytest -x -q -p no:cacheprovider <tests> [-k EXPR]

in that copy, with PYTHONPATH=<copy>/src so that the mutated package, not the editable install of the
working tree, is the one imported (checked once per run: ``sympow.__file__`` must lie in the copy, else
the script aborts). Before the mutants, each distinct test selection is run once on an unmutated copy
(the baseline): it must pass, or the verdicts on it mean nothing.

    .venv/bin/python benchmarks/mutation_check.py                  # every mutant, one at a time
    .venv/bin/python benchmarks/mutation_check.py --list           # the mutants and their tests
    .venv/bin/python benchmarks/mutation_check.py --only eps-dropped --only rotary-layout-swapped
    .venv/bin/python benchmarks/mutation_check.py --jobs 2         # two mutants at a time
    .venv/bin/python benchmarks/mutation_check.py --from-git HEAD \
        --with tests/spec/test_rarely_reached_paths.py

``--from-git REV`` copies a committed revision instead of the working tree (for a stable baseline while
the working tree is mid-edit); ``--with PATH`` lays a working-tree file over it (a new test file).

Verdicts: "killed" (a test failed, or the mutated package failed to import or collect, or the run hit
the per-mutant timeout) or "SURVIVED" (every selected test passed, or none was selected). A mutant whose
snippet is not found the expected number of times is "STALE": the source moved on and the mutant must be
brought up to date. The exit status is 0 only when every mutant is killed, none is stale and every
baseline passes.

What it proves: that the chosen tests are sensitive to each of these bugs, i.e. that a test checks the
behaviour the snippet implements (a gate sum, the last chunk, eps, the rotary layout, ...). A survivor
names a behaviour that no selected test pins down. It does not prove the tests catch every bug, only
these; and a kill by the timeout or an import error shows less than one by a failed assertion.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path("src") / "sympow"
COPIED_DIRS = ("src", "tests")
COPIED_FILES = ("pyproject.toml", "README.md", "conftest.py", "setup.cfg", "pytest.ini", "tox.ini")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info")

# The spec runs on every namespace the tests know; NumPy alone is enough to kill a bug in the maths, and
# much faster (JAX compiles every new shape).
NUMPY_ONLY = "not jax and not torch and not array_api_strict"

FORMS_TESTS = "tests/spec/test_forms.py"
STATE_TESTS = "tests/spec/test_state.py"
EXTREMES_TESTS = "tests/spec/test_extremes.py"
FAMILY_TESTS = "tests/spec/test_family.py"
CHECKS_TESTS = "tests/spec/test_checks.py"
FEATURES_TESTS = "tests/spec/test_features.py"
PRECISION_TESTS = "tests/spec/test_precision.py"
NEW_TESTS = "tests/spec/test_rarely_reached_paths.py"


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``old`` by ``new`` in src/sympow/``file`` (``count`` occurrences, all of
    them; a regular expression when ``regex``), then run ``tests`` with ``-k keyword`` (None: no -k)."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    bug: str
    keyword: str | None = NUMPY_ONLY
    regex: bool = False
    count: int = 1

    @property
    def path(self) -> Path:
        return PACKAGE / self.file

    def apply(self, source: str) -> str:
        """The mutated source; ``StaleMutant`` when ``old`` does not occur exactly ``count`` times."""
        pattern = self.old if self.regex else re.escape(self.old)
        found = len(re.findall(pattern, source))
        if found != self.count:
            raise StaleMutant(
                f"{self.name}: snippet found {found} times in {self.path}, expected {self.count}"
            )
        if self.regex:
            return re.sub(pattern, self.new, source)
        return source.replace(self.old, self.new)

    def selection(self) -> Selection:
        return self.tests, self.keyword


Selection = tuple[tuple[str, ...], str | None]  # test files / node ids, and the -k expression


class StaleMutant(Exception):
    """The snippet of a mutant is not (or not exactly ``count`` times) in the current source."""


MUTANTS: tuple[Mutant, ...] = (
    # ---- gates: cumulative sums (weights.py) and their use in the forms
    Mutant(
        "gate-sum-inclusive",
        "spec/weights.py",
        "laid = xp.where(rows > cols, laid, xp.zeros_like(laid))",
        "laid = xp.where(rows >= cols, laid, xp.zeros_like(laid))",
        (FORMS_TESTS,),
        "segment sums over l = j..i instead of j+1..i: each key also decayed by its own gate",
    ),
    Mutant(
        "suffix-sum-inclusive",
        "spec/weights.py",
        "shifted = xp.concat([g[..., 1:], xp.zeros_like(g[..., :1])], axis=-1)",
        "shifted = g",
        (STATE_TESTS,),
        "decay of key j to the end sums l >= j, not l > j (the state and the chunked state path)",
    ),
    Mutant(
        "prefix-sum-exclusive",
        "spec/weights.py",
        "return xp.cumulative_sum(g, axis=-1)",
        "return xp.cumulative_sum(g, axis=-1) - g",
        (FORMS_TESTS,),
        "decay of the entering state sums l < i, not l <= i (the query's own gate dropped)",
    ),
    Mutant(
        "causal-mask-strict",
        "spec/weights.py",
        "return xp.where(rows >= cols, zeros, xp.full_like(zeros, -math.inf))",
        "return xp.where(rows > cols, zeros, xp.full_like(zeros, -math.inf))",
        (FORMS_TESTS,),
        "ungated causal mask j < i: a token no longer attends to itself",
    ),
    Mutant(
        "segment-mask-strict",
        "spec/weights.py",
        "return xp.where(rows >= cols, sums, xp.full_like(sums, -math.inf))",
        "return xp.where(rows > cols, sums, xp.full_like(sums, -math.inf))",
        (FORMS_TESTS,),
        "gated causal mask j < i: with gates a token no longer attends to itself",
    ),
    # ---- the chunked form (forms.py)
    Mutant(
        "chunked-drops-short-last-chunk",
        "spec/forms.py",
        "valid = xp.reshape(xp.arange(n * size, device=dev) < p.T, (n, size))",
        "valid = xp.reshape(xp.arange(n * size, device=dev) < (p.T // size) * size, (n, size))",
        (STATE_TESTS,),
        "floor instead of ceil: the keys of a shorter last chunk never enter the returned state",
    ),
    Mutant(
        "chunked-padding-enters-state",
        "spec/forms.py",
        "to_end = xp.where(valid, suffix_sums(g, xp), xp.full_like(g, -math.inf))",
        "to_end = suffix_sums(g, xp)",
        (f"{NEW_TESTS}::test_chunk_padding_stays_out_of_the_state",),
        "gated: padding tokens of the last chunk not masked; with a degree-0 term (taylor) they enter z",
    ),
    Mutant(
        "chunked-padding-enters-state-ungated",
        "spec/forms.py",
        "to_end = xp.where(valid, xp.zeros_like(k_lam), xp.full_like(k_lam, -math.inf))",
        "to_end = xp.zeros_like(k_lam)",
        (f"{NEW_TESTS}::test_chunk_padding_stays_out_of_the_state",),
        "ungated: padding tokens of the last chunk not masked; with a degree-0 term they enter z",
    ),
    Mutant(
        "chunked-z-from-S-column",
        "spec/forms.py",
        "return (state, new_scale), (product[..., :e], product[..., e], scale)",
        "return (state, new_scale), (product[..., :e], product[..., e - 1], scale)",
        (FORMS_TESTS,),
        "the chunked state path's normaliser read from S's last column instead of z",
    ),
    Mutant(
        "chunked-state-not-decayed",
        "spec/forms.py",
        "decayed = scale if total is None else scale + total",
        "decayed = scale",
        (FORMS_TESTS,),
        "the chunked state is not decayed by the chunk's gates before the chunk's keys are added",
    ),
    # ---- the parallel form's row blocks and resumed state (forms.py)
    Mutant(
        "row-block-earlier-decay-inclusive",
        "spec/forms.py",
        "before = suffix_sums(g[..., k0:r0], xp)",
        "before = xp.flip(xp.cumulative_sum(xp.flip(g[..., k0:r0], axis=-1), axis=-1), axis=-1)",
        (f"{EXTREMES_TESTS}::test_rotary_angles_of_1e6_at_T_4096",),
        "row blocks after the first: keys before the block decayed by their own gate too (T*T > 2^22)",
    ),
    Mutant(
        "row-block-resumed-decay",
        "spec/forms.py",
        "from_start = prefix_sums(p.for_state(_gates(p)), xp)[..., r0:r1]",
        "from_start = prefix_sums(p.for_state(_gates(p))[..., r0:r1], xp)",
        (FORMS_TESTS,),
        "resumed parallel form in row blocks: the initial state's decay restarts at every row block",
        keyword=f"row_block and {NUMPY_ONLY}",  # the test that shrinks ROW_BLOCK_ELEMENTS
    ),
    Mutant(
        "parallel-drops-initial-state",
        "spec/forms.py",
        "partial = merge(partial, query_rows(p, r0, r1), xp)",
        "partial = partial",
        (STATE_TESTS,),
        "the parallel form ignores the initial state's contribution to the outputs",
    ),
    Mutant(
        "final-state-prefix-decay",
        "spec/forms.py",
        "k_features, k_lam, suffix_sums(g, xp), p.for_state(p.v)",
        "k_features, k_lam, prefix_sums(g, xp), p.for_state(p.v)",
        (STATE_TESTS,),
        "the parallel form's final state decays key j by the gates up to j instead of after j",
    ),
    Mutant(
        "parallel-final-state-initial-not-decayed",
        "spec/forms.py",
        "decayed = Element(None, p.initial_scale + xp.sum(g, axis=-1), p.initial_S, p.initial_z)",
        "decayed = Element(None, p.initial_scale, p.initial_S, p.initial_z)",
        (STATE_TESTS,),
        "the parallel form's final state keeps the initial state undecayed by the call's gates",
    ),
    Mutant(
        "proportion-sum-not-difference",
        "spec/forms.py",
        "return xp.cos((math.pi / 2) * (a[..., :, None] - b[..., None, :]))",
        "return xp.cos((math.pi / 2) * (a[..., :, None] + b[..., None, :]))",
        (FAMILY_TESTS,),
        "proportion weight cos(pi/2 (a_i + b_j)): the sign of the sin a sin b term",
    ),
    Mutant(
        "recurrent-own-term-dropped",
        "spec/forms.py",
        "y = output(merge(own, p.back(past), xp), p, finished)",
        "y = output(p.back(past), p, finished)",
        (FORMS_TESTS,),
        "the recurrent form leaves out token t's own term (state queried before its key is added)",
    ),
    # ---- steps.py: normalisation and merging
    Mutant(
        "eps-dropped",
        "spec/steps.py",
        "den = den + xp.exp(xp.minimum(exponent, largest))",
        "den = den",
        (FORMS_TESTS,),
        "eps left out of the normaliser: y = N / Z",
    ),
    Mutant(
        "eps-not-rescaled",
        "spec/steps.py",
        "exponent = math.log(eps) - reference",
        "exponent = math.log(eps)",
        (FORMS_TESTS,),
        "eps added to the stored denominator without the row's scale exp(-m)",
    ),
    Mutant(
        "query-state-log-scale-sign",
        "spec/steps.py",
        "return num, den, lam + decay_from_start + sums.M[..., None]",
        "return num, den, lam + decay_from_start - sums.M[..., None]",
        (STATE_TESTS,),
        "the entering state's log scale subtracted when a query reads it (parallel form)",
    ),
    Mutant(
        "score-coefficient-dropped",
        "spec/steps.py",
        "key = n * lk + log_c if log_c else n * lk",
        "key = n * lk",
        (FAMILY_TESTS,),
        "the scores' kernel coefficients c_n left out (taylor: sum_n s^n instead of sum_n s^n / n!)",
    ),
    # ---- preparation: scale, rotary, proportions, state packing (prepare.py)
    Mutant(
        "log-scale-sign-on-resume",
        "spec/prepare.py",
        "initial_scale = xp.broadcast_to(xp.astype(state.log_scale, state_dtype), batch)",
        "initial_scale = -xp.broadcast_to(xp.astype(state.log_scale, state_dtype), batch)",
        (STATE_TESTS,),
        "a resumed state's log scale read with the wrong sign",
    ),
    Mutant(
        "resumed-rotary-angle-ignored",
        "spec/prepare.py",
        "mu0 = None if state is None or state.mu is None else xp.broadcast_to(state.mu, (*batch, d // 2))",
        "mu0 = None",
        (STATE_TESTS,),
        "a resumed call restarts the rotary angle at 0 instead of the state's mu",
    ),
    Mutant(
        "scale-applied-twice",
        "spec/prepare.py",
        "root_scale = math.sqrt(request.scale)",
        "root_scale = request.scale",
        (FORMS_TESTS,),
        "q and k each multiplied by sigma instead of sigma^(1/2): scores sigma^2 <q, k>",
    ),
    Mutant(
        "rotary-key-layout-fixed",
        "spec/prepare.py",
        "k = rotate(k, cos, sin, request.rotary_layout, xp)",
        'k = rotate(k, cos, sin, "half", xp)',
        (FORMS_TESTS,),
        "the keys always rotated in the half layout, whatever rotary_layout says",
    ),
    Mutant(
        "relu-key-not-rectified",
        "spec/prepare.py",
        "q, k = xp.maximum(q, 0.0), xp.maximum(k, 0.0)",
        "q, k = xp.maximum(q, 0.0), k",
        (FAMILY_TESTS,),
        "relu kernel: only the queries rectified",
    ),
    Mutant(
        "proportion-weights-swapped",
        "spec/prepare.py",
        "query_weight, key_weight = (_half_weights(x, xp) for x in (a, b))",
        "query_weight, key_weight = (_half_weights(x, xp) for x in (b, a))",
        (FAMILY_TESTS,),
        "the state path weighs queries by b and keys by a",
    ),
    Mutant(
        "state-halves-layout",
        "spec/prepare.py",
        "sz = xp.reshape(sz, (*batch, halves, size, e + 1))",
        "sz = xp.reshape(sz, (*batch, size, halves, e + 1))",
        (FAMILY_TESTS,),
        "state layout mix-up: a resumed S [H*D, e] read feature-major instead of half-major",
    ),
    # ---- rotary.py
    Mutant(
        "rotary-layout-swapped",
        "spec/rotary.py",
        'if layout == "half":',
        'if layout == "interleaved":',
        (FORMS_TESTS,),
        "half and interleaved rotary layouts exchanged",
    ),
    Mutant(
        "rotary-end-angle-first-token",
        "spec/rotary.py",
        "return mu, _wrap(mu[..., -1, :], xp)\n    return _compensated_angles",
        "return mu, _wrap(mu[..., 0, :], xp)\n    return _compensated_angles",
        (STATE_TESTS,),
        "mu not advanced: the returned state's angle is the first token's, not the last's",
    ),
    Mutant(
        "rotary-float32-angle-sum",
        "spec/rotary.py",
        "    return _compensated_angles(increments, mu0, xp)",
        "    total = xp.astype(increments, xp.float32)\n"
        "    if mu0 is not None:\n"
        "        total = xp.concat([xp.astype(mu0, xp.float32)[..., None, :], total], axis=-2)\n"
        "    mu = xp.cumulative_sum(total, axis=-2)\n"
        "    if mu0 is not None:\n"
        "        mu = mu[..., 1:, :]\n"
        "    return mu, _wrap(mu[..., -1, :], xp)",
        (NEW_TESTS,),
        "without float64 (JAX without x64) the angles summed as plain float32, not compensated",
    ),
    Mutant(
        "rotary-two-sum-error-dropped",
        "spec/rotary.py",
        "return s, (a - (s - b_virtual)) + (b - b_virtual)",
        "return s, s - s",
        (NEW_TESTS,),
        "the compensated angle sum keeps no rounding error of its additions (plain float32 TwoSum)",
    ),
    # ---- features.py / feature_blocks.py / kernel.py
    Mutant(
        "multinomial-not-square-rooted",
        "spec/features.py",
        "coefficients.append(math.sqrt(math.factorial(p) / denominator))",
        "coefficients.append(math.factorial(p) / denominator)",
        (FEATURES_TESTS,),
        "feature coefficients p!/prod a_m! instead of their square roots",
    ),
    Mutant(
        "degree-log-coefficient-sign",
        "spec/features.py",
        "exponent = 0.5 * log_c + n * safe",
        "exponent = -0.5 * log_c + n * safe",
        (FAMILY_TESTS,),
        "each degree's scale sqrt(c_n) inverted in the state path (taylor: 1/n! -> n!)",
    ),
    Mutant(
        "cross-pairs-coefficient",
        "spec/feature_blocks.py",
        "left = halves[..., 0, :, None, :] * math.sqrt(2.0)",
        "left = halves[..., 0, :, None, :] * 2.0",
        (FORMS_TESTS,),
        "degree 2 by halving: cross pairs weighted 2 instead of sqrt 2 (chunked, even d > 8)",
    ),
    Mutant(
        "units-root-forgotten",
        "spec/feature_blocks.py",
        "units[n] = unit * xp.exp((exponent - safe) / n)[..., None]",
        "units[n] = unit * xp.exp(exponent - safe)[..., None]",
        (FAMILY_TESTS,),
        "several degrees: the degree-n block scaled by exp(x_n - lam) per entry instead of its n-th root",
    ),
    Mutant(
        "row-order-not-inverted",
        "spec/feature_blocks.py",
        "inverse[table_row] = internal",
        "inverse[internal] = table_row",
        (STATE_TESTS,),
        "inverse_order returns row_order: the chunked final state's rows in the wrong order (d > 8)",
    ),
    Mutant(
        "taylor-coefficient",
        "spec/kernel.py",
        "coefficients = tuple(1.0 / math.factorial(n) for n in degrees)",
        "coefficients = tuple(1.0 / math.factorial(n + 1) for n in degrees)",
        (FAMILY_TESTS,),
        "Taylor kernel with coefficients 1/(n+1)! instead of 1/n!",
    ),
    # ---- checks.py: defaults and value checks
    Mutant(
        "default-scale-inverted",
        "spec/checks.py",
        "scale = d**-0.5 if scale is None",
        "scale = d**0.5 if scale is None",
        (FORMS_TESTS,),
        "the default scale sigma = d^(1/2) instead of d^(-1/2)",
    ),
    Mutant(
        "state-dtype-degree-4-float64",
        "spec/checks.py",
        "if max(kernel.degrees) <= ACCUMULATION_MAX_DEGREE or not wide:",
        "if max(kernel.degrees) < ACCUMULATION_MAX_DEGREE or not wide:",
        (f"{NEW_TESTS}::test_default_state_dtype_at_the_degree_boundary",),
        "degree 4 already gets a float64 state path (math.md 9: float32 up to degree 4)",
    ),
    Mutant(
        "positive-log-gate-accepted",
        "spec/checks.py",
        "    return xp.isnan(g) | (g > 0)",
        "    return xp.isnan(g)",
        (CHECKS_TESTS,),
        "a positive log_gate (a gate above 1) is accepted",
    ),
    Mutant(
        "state-log-scale-inf-accepted",
        "spec/checks.py",
        "    return xp.isnan(log_scale) | (log_scale == math.inf)",
        "    return xp.isnan(log_scale)",
        (CHECKS_TESTS,),
        "an initial state with log_scale = +inf is accepted",
    ),
    Mutant(
        "proportion-upper-bound-unchecked",
        "spec/checks.py",
        "    return ~((x >= 0) & (x <= 1))",
        "    return ~(x >= 0)",
        (CHECKS_TESTS,),
        "proportions above 1 are accepted",
    ),
    Mutant(
        "high-degree-state-float32",
        "spec/checks.py",
        "ACCUMULATION_MAX_DEGREE = 4",
        "ACCUMULATION_MAX_DEGREE = 6",
        (PRECISION_TESTS,),
        "degrees 5 and 6 keep a float32 state path instead of float64 (math.md 9)",
    ),
    # ---- state.py
    Mutant(
        "unscaled-sign",
        "spec/state.py",
        "factor = xp.exp(self.log_scale)",
        "factor = xp.exp(-self.log_scale)",
        (STATE_TESTS,),
        "State.unscaled divides by exp(log_scale) instead of multiplying",
    ),
)


# ----------------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class Outcome:
    """What one pytest run gave: its exit code (None after a timeout), output and duration."""

    returncode: int | None
    output: str
    seconds: float

    @property
    def verdict(self) -> str:
        if self.returncode is None:
            return "killed (timeout)"
        if self.returncode == 1:
            return "killed"
        if self.returncode in (2, 3):  # interrupted (collection / import error) or internal error
            return f"killed (error, rc={self.returncode})"
        if self.returncode == 5:
            return "SURVIVED (no test selected)"
        if self.returncode == 0:
            return "SURVIVED"
        return f"error (rc={self.returncode})"

    @property
    def problem(self) -> str:
        """What went wrong in a run that should have passed (a baseline)."""
        if self.returncode is None:
            return "timed out"
        if self.returncode == 1:
            return f"a test failed: {self.first_failure}"
        return f"pytest exit status {self.returncode} ({self.summary})"

    @property
    def killed(self) -> bool:
        return self.verdict.startswith("killed")

    @property
    def first_failure(self) -> str:
        """The node id of the first failed or errored test, from pytest's short summary (-ra)."""
        for line in self.output.splitlines():
            match = re.match(r"(FAILED|ERROR) (\S+)", line)
            if match:
                return match.group(2)
        return ""

    @property
    def summary(self) -> str:
        """pytest's last line, e.g. '1 failed, 12 passed in 3.1s'."""
        lines = [line.strip("= ") for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass(frozen=True)
class Snapshot:
    """The sources the copies are made of: the working tree (``revision`` None) or a git revision, with
    the working tree's files ``overlay`` (paths from the repository root) laid over it."""

    revision: str | None = None
    overlay: tuple[str, ...] = ()

    def read(self, path: Path) -> str:
        if self.revision is None or str(path) in self.overlay:
            return (ROOT / path).read_text()
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{self.revision}:{path.as_posix()}"], capture_output=True
        )
        if shown.returncode:
            raise FileNotFoundError(f"{path} is not in {self.revision}: {shown.stderr.decode().strip()}")
        return shown.stdout.decode()

    def copy_to(self, destination: Path) -> None:
        """src/, tests/ and the root files pytest reads, without caches, .venv or .git."""
        if self.revision is None:
            for name in COPIED_DIRS:
                shutil.copytree(ROOT / name, destination / name, ignore=IGNORED)
            for name in COPIED_FILES:
                if (ROOT / name).is_file():
                    shutil.copy2(ROOT / name, destination / name)
        else:
            archive = tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", self.revision)))
            wanted = [
                member
                for member in archive.getmembers()
                if member.name.split("/", 1)[0] in COPIED_DIRS or member.name in COPIED_FILES
            ]
            archive.extractall(destination, members=wanted, filter="data")
        for name in self.overlay:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)

    def describe(self) -> str:
        if self.revision is None:
            return "the working tree"
        overlay = f" with {', '.join(self.overlay)} from the working tree" if self.overlay else ""
        return f"git {self.revision}{overlay}"


def git(*args: str) -> bytes:
    result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)
    if result.returncode:
        sys.exit(f"mutation_check: git {' '.join(args)} failed: {result.stderr.decode().strip()}")
    return result.stdout


@dataclass(frozen=True)
class Settings:
    """How every pytest run of one invocation is made."""

    snapshot: Snapshot
    timeout: float
    profile: str
    jobs: int


def environment(copy: Path, settings: Settings) -> dict[str, str]:
    """This process's environment, with the copy's src (and root, for ``tests.*``) first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy)])
    env["HYPOTHESIS_PROFILE"] = settings.profile
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def verify_import(copy: Path, settings: Settings) -> None:
    """Abort unless ``import sympow`` in the copy's environment loads the copy's package."""
    result = subprocess.run(
        [sys.executable, "-c", "import sympow; print(sympow.__file__)"],
        cwd=copy, env=environment(copy, settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    loaded = Path(result.stdout.strip()).resolve() if result.returncode == 0 else None
    expected = (copy / "src" / "sympow").resolve()
    if loaded is None or expected not in loaded.parents:
        sys.exit(
            f"mutation_check: `import sympow` in the copy loads {loaded or result.stderr.strip()!r}, not "
            f"the copy under {expected}; the mutants would test the unmutated working tree. Is sympow "
            "installed non-editable, or does a .pth file come before PYTHONPATH?"
        )


def pytest_command(tests: Sequence[str], keyword: str | None) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    if importlib.util.find_spec("xdist") is not None:
        command += ["-n", "0"]
    if keyword:
        command += ["-k", keyword]
    return command


def run_tests(copy: Path, selection: Selection, settings: Settings) -> Outcome:
    tests, keyword = selection
    start = time.perf_counter()
    try:
        result = subprocess.run(
            pytest_command(tests, keyword), cwd=copy, env=environment(copy, settings),
            capture_output=True, text=True, timeout=settings.timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        return Outcome(None, output, time.perf_counter() - start)
    return Outcome(result.returncode, result.stdout + result.stderr, time.perf_counter() - start)


def run_mutant(mutant: Mutant, settings: Settings) -> Outcome:
    """Copy, mutate, run the mutant's tests; the copy is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        copy = Path(tmp)
        settings.snapshot.copy_to(copy)
        target = copy / mutant.path
        target.write_text(mutant.apply(target.read_text()))
        return run_tests(copy, mutant.selection(), settings)


def run_baselines(selections: Sequence[Selection], settings: Settings) -> dict[Selection, Outcome]:
    """Each distinct selection once on an unmutated copy (after checking which package it imports)."""
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
        copy = Path(tmp)
        settings.snapshot.copy_to(copy)
        verify_import(copy, settings)
        outcomes = parallel_map(lambda s: run_tests(copy, s, settings), selections, settings.jobs)
    return dict(zip(selections, outcomes, strict=True))


Item = TypeVar("Item")
Result = TypeVar("Result")


def parallel_map(fn: Callable[[Item], Result], items: Sequence[Item], jobs: int) -> list[Result]:
    if jobs <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))


# ----------------------------------------------------------------------------------------------------------
# Reporting


def describe_selection(selection: Selection) -> str:
    """The tests of a selection, short: paths without tests/, '[numpy]' for the NumPy-only filter."""
    tests, keyword = selection
    names = ", ".join(t.removeprefix("tests/") for t in tests)
    if keyword == NUMPY_ONLY:
        return f"{names} [numpy]"
    if keyword and keyword.endswith(f" and {NUMPY_ONLY}"):
        return f"{names} -k '{keyword.removesuffix(f' and {NUMPY_ONLY}')}' [numpy]"
    return f"{names} -k '{keyword}'" if keyword else names


def describe_tests(mutant: Mutant) -> str:
    return describe_selection(mutant.selection())


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def check_stale(mutants: Sequence[Mutant], snapshot: Snapshot) -> dict[str, str]:
    """{name: reason} of the mutants whose snippet is not found in the snapshot's source."""
    stale = {}
    for mutant in mutants:
        try:
            mutant.apply(snapshot.read(mutant.path))
        except StaleMutant as error:
            stale[mutant.name] = str(error)
        except OSError as error:
            stale[mutant.name] = f"{mutant.name}: {error}"
    return stale


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    parser.add_argument("--profile", default="ci", help="Hypothesis profile (default ci)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument(
        "--from-git", metavar="REV", help="copy this git revision instead of the working tree (e.g. HEAD)"
    )
    parser.add_argument(
        "--with", dest="overlay", action="append", default=[], metavar="PATH",
        help="with --from-git: take this file from the working tree (repeatable; e.g. a new test file)",
    )  # fmt: skip
    parser.add_argument(
        "--verbose", action="store_true", help="print pytest's output for survivors and failing baselines"
    )
    return parser.parse_args(argv)


def select(only: Sequence[str] | None) -> list[Mutant]:
    names = [m.name for m in MUTANTS]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        sys.exit(f"mutation_check: duplicate mutant names {duplicates}")
    if not only:
        return list(MUTANTS)
    unknown = sorted(set(only) - set(names))
    if unknown:
        sys.exit(f"mutation_check: unknown mutants {unknown}; --list shows them")
    return [m for m in MUTANTS if m.name in only]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.overlay and not args.from_git:
        sys.exit("mutation_check: --with needs --from-git (the working tree already holds the file)")
    snapshot = Snapshot(args.from_git, tuple(args.overlay))
    settings = Settings(snapshot, args.timeout, args.profile, max(1, args.jobs))
    mutants = select(args.only)
    stale = check_stale(mutants, snapshot)

    if args.list:
        rows = [
            (m.name, m.file, describe_tests(m), "STALE" if m.name in stale else "", m.bug) for m in mutants
        ]
        print_table(rows, ("mutant", "file", "tests", "", "bug"))
        return 1 if stale else 0

    print(f"mutants of {snapshot.describe()}, Hypothesis profile {settings.profile!r}", flush=True)
    for reason in stale.values():
        print(f"STALE {reason}", file=sys.stderr)
    live = [m for m in mutants if m.name not in stale]
    baselines: dict[Selection, Outcome] = {}
    if live and not args.no_baseline:
        selections = list(dict.fromkeys(m.selection() for m in live))
        print(f"baseline: {len(selections)} test selections on an unmutated copy ...", flush=True)
        baselines = run_baselines(selections, settings)
    elif live:
        with tempfile.TemporaryDirectory(prefix="mutant-import-") as tmp:
            snapshot.copy_to(Path(tmp))
            verify_import(Path(tmp), settings)
    broken = {s for s, o in baselines.items() if o.returncode not in (0, 5)}
    for selection in broken:
        outcome = baselines[selection]
        print(f"BASELINE FAILS for {describe_selection(selection)}: {outcome.problem}", file=sys.stderr)
        if args.verbose:
            print(outcome.output[-3000:], file=sys.stderr)

    runnable = [m for m in live if m.selection() not in broken]
    print(f"running {len(runnable)} mutants ({settings.jobs} at a time) ...", flush=True)
    start = time.perf_counter()
    results = parallel_map(lambda m: run_mutant(m, settings), runnable, settings.jobs)
    outcomes = dict(zip((m.name for m in runnable), results, strict=True))

    rows, survivors = [], []
    for m in mutants:
        if m.name in stale:
            rows.append((m.name, m.file, describe_tests(m), "STALE", stale[m.name].split(": ", 1)[-1], ""))
        elif m.selection() in broken:
            problem = baselines[m.selection()].problem.removeprefix("a test failed: ").removeprefix("tests/")
            rows.append((m.name, m.file, describe_tests(m), "BASELINE FAILS", problem, ""))
        else:
            outcome = outcomes[m.name]
            if not outcome.killed:
                survivors.append((m, outcome))
            by = outcome.first_failure.removeprefix("tests/") or outcome.summary
            rows.append((m.name, m.file, describe_tests(m), outcome.verdict, by, f"{outcome.seconds:.1f}"))
    print()
    print_table(rows, ("mutant", "file", "tests", "result", "killed by / pytest summary", "s"))
    killed = sum(outcome.killed for outcome in outcomes.values())
    print(
        f"\n{killed} of {len(mutants)} killed, {len(survivors)} survived, {len(stale)} stale, "
        f"{len(mutants) - len(runnable) - len(stale)} not run (baseline fails); "
        f"{time.perf_counter() - start:.0f} s"
    )
    for m, outcome in survivors:
        print(f"SURVIVED {m.name} ({m.file}): {m.bug}")
        if args.verbose:
            print(outcome.output[-3000:])
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
