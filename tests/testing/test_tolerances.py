"""``angle_error``: rotary angles compared modulo 2 pi, not through cos alone."""

from __future__ import annotations

import math

import numpy as np

from sympow.testing.tolerances import angle_error


def test_whole_turns_agree():
    """Angles that differ by whole turns (a state may keep mu wrapped) compare equal to rounding."""
    mu = np.array([[0.3, -2.0, 7.5], [40.0, -1e3, 1e-9]])
    turns = np.array([[1.0, -3.0, 0.0], [-7.0, 160.0, 2.0]])
    assert angle_error(mu + 2 * math.pi * turns, mu) <= 1e-12
    assert angle_error(np.array([math.pi]), np.array([-math.pi])) <= 1e-15


def test_a_sign_flip_or_a_shift_is_caught():
    """mu_ref = -mu has the same cosine but not the same angle; a shift by one increment is its size."""
    mu = np.array([0.3, -2.0, 1.1])
    assert np.allclose(np.cos(mu), np.cos(-mu))
    # the differences 2 mu = 0.6, -4.0, 2.2 are, modulo 2 pi, 0.6, 2.28 and 2.2 from zero
    assert abs(angle_error(-mu, mu) - (2 * math.pi - 4.0)) <= 1e-12
    assert abs(angle_error(mu + 1e-6, mu) - 1e-6) <= 1e-15
    assert abs(angle_error(mu + math.pi, mu) - math.pi) <= 1e-12


def test_shape_and_finiteness_mismatches_are_infinite():
    """A missing axis or a non-finite angle is never close."""
    assert angle_error(np.zeros(3), np.zeros((1, 3))) == math.inf
    assert angle_error(np.array([np.nan]), np.array([0.0])) == math.inf
    assert angle_error(np.zeros(0), np.zeros(0)) == 0.0
