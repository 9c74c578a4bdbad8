"""The MQAR generator: every answer is its key's value, keys never repeat, the gaps follow the power law."""

from __future__ import annotations

import numpy as np
import pytest
from experiments.tasks import IGNORE, byte_windows, mqar, query_gaps, stdlib_text


def opening(inputs: np.ndarray, assignments: int) -> tuple[np.ndarray, np.ndarray]:
    return inputs[: 2 * assignments : 2], inputs[1 : 2 * assignments : 2]


@pytest.mark.parametrize(("num_pairs", "assignments"), [(1, None), (8, None), (24, None), (5, 15)])
def test_every_answer_is_the_value_paired_with_its_key(num_pairs, assignments):
    """At every labelled position the input is a key of the opening and the label its (latest) value;
    each key is queried exactly once; keys and values come from their halves of the vocabulary."""
    A = num_pairs if assignments is None else assignments
    inputs, labels = mqar(np.random.default_rng(0), 64, seq_len=96, vocab_size=128, num_pairs=num_pairs,
                          assignments=assignments)  # fmt: skip
    for row, label in zip(inputs, labels, strict=True):
        keys, values = opening(row, A)
        assert ((1 <= keys) & (keys < 64)).all() and ((64 <= values) & (values < 128)).all()
        latest = {}
        for key, value in zip(keys, values, strict=True):
            latest[key] = value
        queried = np.nonzero(label != IGNORE)[0]
        assert sorted(row[queried]) == sorted(set(keys)) and len(queried) == num_pairs
        for position in queried:
            assert label[position] == latest[row[position]]
        unlabelled = np.ones(row.shape, bool)
        unlabelled[queried] = False
        assert (row[2 * A :][unlabelled[2 * A :]] == 0).all()  # filler between the queries


def test_no_key_repeats_within_an_example():
    inputs, _ = mqar(np.random.default_rng(1), 200, seq_len=64, vocab_size=64, num_pairs=20)
    for row in inputs:
        keys, values = opening(row, 20)
        assert len(set(keys)) == 20 and len(set(values)) == 20


def test_reassigned_keys_repeat_and_every_key_appears():
    inputs, _ = mqar(np.random.default_rng(2), 50, seq_len=64, vocab_size=128, num_pairs=4, assignments=12)
    for row in inputs:
        keys, _ = opening(row, 12)
        assert len(set(keys)) == 4


@pytest.mark.parametrize("alpha", [0.1, 1.0, 2.0])
def test_gap_distribution_follows_the_power_law(alpha):
    """With one query an example, the gap g in 1..S has P(g) = g^(alpha - 1) / sum: the Kolmogorov-Smirnov
    distance of 20000 draws (fixed seed) to that law is below its 1% critical value 1.63 / sqrt(n)."""
    space, n = 40, 20000
    inputs, labels = mqar(np.random.default_rng(3), n, seq_len=2 + space, vocab_size=16, num_pairs=1,
                          alpha=alpha)  # fmt: skip
    gaps = query_gaps(inputs, labels, 1)
    assert gaps.min() >= 1 and gaps.max() <= space
    law = np.arange(1, space + 1, dtype=np.float64) ** (alpha - 1)
    expected = np.cumsum(law / law.sum())
    observed = np.cumsum(np.bincount(gaps, minlength=space + 1)[1:]) / n
    assert np.abs(observed - expected).max() < 1.63 / np.sqrt(n)


def test_smaller_alpha_puts_queries_nearer():
    """The parameter moves the distribution: the mean gap grows with alpha (many queries an example)."""
    means = []
    for alpha in (0.05, 0.5, 1.0):
        inputs, labels = mqar(np.random.default_rng(4), 500, seq_len=128, vocab_size=128, num_pairs=8,
                              alpha=alpha)  # fmt: skip
        means.append(query_gaps(inputs, labels, 8).mean())
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (dict(seq_len=16, vocab_size=64, num_pairs=8), "leaves 0 positions"),
        (dict(seq_len=64, vocab_size=16, num_pairs=8), "holds at most 7 keys"),
        (dict(seq_len=64, vocab_size=64, num_pairs=4, assignments=2), "num_pairs <= assignments"),
        (dict(seq_len=64, vocab_size=64, num_pairs=4, alpha=0.0), "alpha must be > 0"),
    ],
)
def test_impossible_settings_are_refused(arguments, match):
    with pytest.raises(ValueError, match=match):
        mqar(np.random.default_rng(0), 1, **arguments)


def test_stdlib_text_and_windows():
    """The corpus is the interpreter's own sources (deterministic), windows are consecutive bytes."""
    text = stdlib_text(200_000)
    assert len(text) == 200_000 and text == stdlib_text(200_000) and b"def " in text
    array = np.frombuffer(text, dtype=np.uint8)
    windows = byte_windows(array, np.random.default_rng(0), 4, 32)
    assert windows.shape == (4, 33) and windows.dtype == np.int64
    for window in windows:
        assert bytes(window.astype(np.uint8)) in text
