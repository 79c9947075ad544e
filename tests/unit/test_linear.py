"""The link and gradient the mixin model's kernels inline compute what river's logistic
regression computes (its own functions, on a grid that reaches both tails)."""

from __future__ import annotations

import pytest
from river import optim
from river.utils import math as river_math

from agents.learning.linear import log_loss_gradient, sigmoid

LOGITS = [x / 4 for x in range(-200, 201)] + [-1e6, -35.0, -30.5, 30.5, 35.0, 1e6]


def test_sigmoid_is_rivers():
    for z in LOGITS:
        assert sigmoid(z) == pytest.approx(river_math.sigmoid(z), abs=1e-15), z


def test_log_loss_gradient_is_rivers():
    loss = optim.losses.Log()
    for y in (False, True):
        for z in LOGITS:
            want = loss.gradient(y, z)
            assert log_loss_gradient(y, z) == pytest.approx(want, rel=1e-12, abs=1e-300), (y, z)


def test_tails_match_the_log_loss_limits():
    assert sigmoid(-31) == 0.0 and sigmoid(31) == 1.0 and sigmoid(0) == 0.5
    assert log_loss_gradient(True, 50.0) == pytest.approx(0.0, abs=1e-20)
    assert log_loss_gradient(True, -50.0) == -1.0 and log_loss_gradient(False, 50.0) == 1.0
    assert log_loss_gradient(True, 0.0) == -0.5
