"""Logistic regression over binary features numbered 0..size-1, learnt by plain SGD.

It computes exactly what river's `LogisticRegression(optimizer=SGD(lr), intercept_lr=lr)` does
(log loss, gradient clipped at 1e12, no L2, the intercept updated with the same step; a test
holds the two together on a stream), specialised for what the mixin model feeds it: every
feature is present (1.0) or absent, and the model numbers them itself. River spends most of a
`learn_one` in generic machinery (VectorDict, the optimizer's look-ahead, scheduler look-ups,
learn-mode masks) and in hashing freshly built "A&B" strings: 10.7 µs of the replay's ~17 µs
per result. Here a feature is an index into a flat list of floats (a list reads and writes
faster than array('d'), which boxes every access; snapshots store it as an array). The learner is the
bottleneck the benchmark shows, so it is hand-written rather than taken from the library.

`learn` takes the logit the caller already computed for the same features (the model predicts
before it learns, progressive validation), so an update costs one pass over the features.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence

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


def zeros(size: int) -> list[float]:
    return [0.0] * size


class Logistic:
    """`weights[i]` is the weight of feature i; `features` are sequences of distinct indices."""


    __slots__ = ("lr", "intercept_lr", "weights", "intercept")

    def __init__(self, size: int, lr: float = 0.2, intercept_lr: float | None = None,
                 weights: Iterable[float] | None = None, intercept: float = 0.0) -> None:
        self.lr = lr
        self.intercept_lr = lr if intercept_lr is None else intercept_lr
        self.weights = zeros(size) if weights is None else [float(w) for w in weights]
        if len(self.weights) != size:
            raise ValueError(f"{len(self.weights)} weights for {size} features")
        self.intercept = intercept

    def logit(self, features: Sequence[int]) -> float:
        return self.intercept + sum(map(self.weights.__getitem__, features))

    def proba(self, features: Sequence[int]) -> float:
        return sigmoid(self.logit(features))

    def learn(self, features: Sequence[int], y: bool, logit: float | None = None) -> None:
        """One SGD step on one example; `logit` is `self.logit(features)` if the caller has it."""
        g = log_loss_gradient(y, self.logit(features) if logit is None else logit)
        self.intercept -= self.intercept_lr * g
        step = self.lr * g
        w = self.weights
        for i in features:
            w[i] -= step

    def copy(self, lr: float | None = None) -> Logistic:
        """An independent copy, optionally learning at another rate (weights and intercept)."""
        rate = self.lr if lr is None else lr
        return Logistic(len(self.weights), rate, rate if lr is not None else self.intercept_lr,
                        self.weights, self.intercept)

    def __getstate__(self) -> tuple:
        return self.lr, self.intercept_lr, array("d", self.weights), self.intercept

    def __setstate__(self, state: tuple) -> None:
        self.lr, self.intercept_lr, weights, self.intercept = state
        self.weights = weights.tolist()
