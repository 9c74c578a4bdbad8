"""Each experiment runs end to end with its tiny setting (seconds) and writes its CSV and PNG."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from experiments import leapformer_recency, length_generalisation, mqar


@pytest.mark.parametrize(
    ("script", "name", "columns"),
    [
        (mqar, "mqar_tiny", {"mixer", "num_pairs", "seed", "accuracy"}),
        (length_generalisation, "length_generalisation_tiny", {"model", "seed", "position", "loss"}),
        (leapformer_recency, "leapformer_recency_tiny", {"model", "assignments", "seed", "accuracy"}),
    ],
)
def test_tiny_run_writes_csv_and_plot(script, name, columns, tmp_path):
    rows = script.main(["--tiny", "--workers", "1", "--out", str(tmp_path)])
    with (tmp_path / f"{name}.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows) > 0 and columns <= set(written[0])
    assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_runner_pool_of_two_processes(tmp_path):
    """The pool path (spawned workers, one torch thread each) gives the rows of the serial path."""
    serial = mqar.main(["--tiny", "--workers", "1", "--out", str(tmp_path / "serial")])
    pooled = mqar.main(["--tiny", "--workers", "2", "--out", str(tmp_path / "pool")])
    key = ("mixer", "num_pairs", "seed", "accuracy", "final_loss")
    assert [tuple(row[k] for k in key) for row in pooled] == [tuple(row[k] for k in key) for row in serial]
