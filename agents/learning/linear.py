"""The logistic link and the log-loss gradient of the mixin model's SGD, scalar and exact.

They compute what river's `LogisticRegression(optimizer=SGD(lr), intercept_lr=lr)` computes
(its sigmoid's saturation, its Log loss's asymptotic branches, the gradient clipped at 1e12; a
test holds them to river's own functions), written out because the model's compiled kernels
(kernels.py, numba) inline them, which river's generic machinery cannot be.
"""

from __future__ import annotations

import math

# river.utils.math.sigmoid's saturation and river.optim.losses.Log's asymptotic branches.
_SIGMOID_CLAMP = 30.0
_LOG_LOSS_TAIL = 18.0
_CLIP_GRADIENT = 1e12


def sigmoid(z: float) -> float:
    if z < -_SIGMOID_CLAMP:
        return 0.0
    if z > _SIGMOID_CLAMP:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def log_loss_gradient(y: bool, z: float) -> float:
    """d(log loss)/d(logit) for a label in {False, True} and a logit z (river's Log.gradient)."""
    sign = 1 if y else -1
    margin = z * sign
    if margin > _LOG_LOSS_TAIL:
        g = math.exp(-margin) * -sign
    elif margin < -_LOG_LOSS_TAIL:
        g = float(-sign)
    else:
        g = -sign / (math.exp(margin) + 1.0)
    return min(max(g, -_CLIP_GRADIENT), _CLIP_GRADIENT)
