"""Sequence parallelism (math.md 11): one sequence split over 1, 2 and 4 members equals the one-device
call, on simulated JAX devices and on gloo processes, each in processes of their own (``jax_worker``,
``torch_worker``); bad groups and bad calls are refused by name, without hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sympow
from sympow.spec import sequence
from sympow.testing.tolerances import tolerance

from .cases import CASES

ROOT = Path(__file__).resolve().parents[2]
# Under the CI profile P = 4 runs every case and fewer members a few, to bound JAX's compile time (about
# 2 minutes for P = 4 on 2 cores); HYPOTHESIS_PROFILE=thorough runs every case on every P.
SUBSETS = {
    1: ["sympow2-scan-chunked-float64", "sympow2-scan-chunked-bfloat16"],
    2: ["sympow2-allgather-chunked-float64", "sympow2-scan-chunked-float64", "sympow2-scan-chunked-float16"],
    4: [],
}
if os.environ.get("HYPOTHESIS_PROFILE") == "thorough":
    SUBSETS = {P: [] for P in SUBSETS}


def _worker(module: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def assert_case(case_id: str, result: dict, where: str) -> None:
    case = next(c for c in CASES if c.id == case_id)
    bound = tolerance(case.dtype)  # float64: 1e-10, the one-device equality the issue asks for
    for key in ("y", "state", "grad"):
        if key in result:
            assert result[key] <= bound, f"{where} {case_id}: {key} differs by {result[key]:.2e} > {bound}"
    angle_error = result["mu"]
    assert angle_error <= tolerance("float64"), f"{where} {case_id}: final angle off by {angle_error:.2e}"
    if result["model_bytes"] is not None:
        assert result["bytes"] == result["model_bytes"], f"{where} {case_id}: bytes {result} != cost model"
    assert case.gradients == ("grad" in result)


@pytest.mark.parametrize("P", [1, 2, 4])
def test_jax_mesh(P):
    pytest.importorskip("jax")
    done = _worker("tests.sequence.jax_worker", str(P), *SUBSETS[P], timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    if P > 1:  # a forbidden value on member 0 reaches every later row, on every member, and the State
        expected = {"before": True, "after": True, "state": True}
        assert results.pop("poison") == {"allgather": expected, "scan": expected}
    assert set(results) == set(SUBSETS[P] or [c.id for c in CASES])
    for case_id, result in results.items():
        assert_case(case_id, result, f"jax P={P}")


@pytest.mark.parametrize("P", [1, 2, 4])
def test_torch_gloo(P, tmp_path):
    pytest.importorskip("torch")
    wanted = SUBSETS[1] if P == 1 else []  # one member: a few cases (each equals the plain call)
    done = _worker("tests.sequence.torch_worker", str(P), str(tmp_path), *wanted, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(P):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        messages = results.pop("refusals", None)
        assert results.pop("variant") <= tolerance("float64")  # a named variant passes sequence_group through
        assert set(results) == set(wanted or [c.id for c in CASES])
        for case_id, result in results.items():
            assert_case(case_id, result, f"torch P={P} rank {rank}")
        if P > 1:  # every rank raises, naming what differs
            assert "must agree on d (by member: [4, 6" in messages[0], messages[0]
            assert "must agree on initial_state values" in messages[1], messages[1]
            assert all(m.startswith("sequence_group") for m in messages[:2])
            expected = "q must be finite" if rank == P - 1 else f"sequence_group members [{P - 1}] refused"
            assert messages[2].startswith(expected), messages[2]


def test_the_signature_has_its_declared_length():
    """A refused member sends SIGNATURE_LENGTH entries: the others' signatures must have as many."""
    request = sympow.spec.validate(
        np.ones((2, 5, 4)), np.ones((2, 5, 4)), np.ones((2, 5, 3)), kernel="sympow", power=2, scale=None,
        log_gate=None, proportions=None, rotary=None, rotary_layout="half", normalize=True, eps=0.0,
        form="auto", chunk_size=64, initial_state=None, return_state=False,
    )  # fmt: skip
    assert len(sequence.signature(request)) == sequence.SIGNATURE_LENGTH
    assert min(sequence.signature(request).values()) > sequence.REFUSED


def test_an_unbound_axis_name_is_refused():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.ones((2, 5, 4))
    with pytest.raises(ValueError, match="sequence_group='seq' is not a bound mesh axis"):
        sympow.attention(x, x, x, sequence_group="seq")


@pytest.mark.parametrize("group", [3, ("seq",), object()])
def test_a_group_of_another_type_is_refused(group):
    x = np.ones((5, 4))
    with pytest.raises(TypeError, match="sequence_group must be a JAX mesh axis name"):
        sympow.attention(x, x, x, sequence_group=group)


def test_backends_without_collectives_say_so():
    x = np.ones((5, 4))
    with pytest.raises(ValueError, match="no collectives for sequence_group"):
        sympow.attention(x, x, x, sequence_group="seq")
    torch = pytest.importorskip("torch")
    t = torch.ones(5, 4)
    with pytest.raises(ValueError, match=r"must be a torch\.distributed ProcessGroup on torch"):
        sympow.attention(t, t, t, sequence_group="seq", backend="torch")
    with pytest.raises(ValueError, match="sequence_exchange must be one of"):
        sympow.attention(t, t, t, sequence_exchange="ring")


@pytest.mark.parametrize("P", [2, 4, 64, 1024])
def test_the_cost_model(P):
    """Bytes: (P - 1) elements for the all-gather; ceil(log2 P) + 2 for the scan with the final state;
    the choice follows the model's seconds (the all-gather for few members, the scan for many)."""
    element = sequence.element_bytes(1, 2080, 64, 4)
    assert element == (2080 * 65 + 2) * 4
    assert sequence.model_bytes(P, "allgather", 1, 2080, 64, 4, True) == (P - 1) * element
    steps = (P - 1).bit_length()
    assert sequence.model_bytes(P, "scan", 1, 2080, 64, 4, True) == (steps + 2) * element
    with_rotary = sequence.model_bytes(P, "scan", 1, 2080, 64, 4, False, 32, 8)
    assert with_rotary == (steps + 1) * element + (P - 1) * 256
    seconds = {x: sequence.model_seconds(P, x, element, True) for x in ("allgather", "scan")}
    assert (seconds["allgather"] <= seconds["scan"]) == (P <= 8)
