"""Per-pattern precision from feedback: a weighted Beta posterior with bounded source influence.

- true_positive, and user_override with is_correct=true, add user_weight to α;
  false_positive, and user_override with is_correct=false, add it to β. false_negative feeds
  recall (a missed finding says nothing about the precision of the ones reported).
- Each source's total weight per pattern counts at most `source_cap`: a flood of feedback from
  one source is scaled down to that cap (its TP/FP ratio is kept), so it cannot flip a pattern
  on its own. Sources beyond `max_sources` share one bucket (that bucket is capped too).
- Weighted counts are turned into an effective sample size n_eff = (Σw)²/Σw² (fractional or
  uneven weights are less evidence than their sum suggests); the posterior is then
  Beta(α0 + p̂·n_eff, β0 + (1-p̂)·n_eff), with a prior worth 10 votes at precision .9.
- Suppression only when confident the pattern is bad: P(precision < floor) > suppress_at;
  reported again once P(precision < floor) < resume_at (hysteresis, no flapping).

State is a `FeedbackState` (versioned; JSON in a Faust table); functions here take and return it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from scipy.special import betainc, betaincinv

from schemas.state import VersionedState

OVERFLOW_SOURCE = "_other"


@dataclass(frozen=True)
class FeedbackPolicy:
    floor: float = 0.8
    suppress_at: float = 0.95
    resume_at: float = 0.5
    # Prior: a shipped detector is presumed good (mean .9) with the weight of 10 votes. A flat
    # prior would put P(precision < .8) at .96 after one false positive, so suppress at once.
    prior_mean: float = 0.9
    prior_strength: float = 10.0
    source_cap: float = 20.0
    max_sources: int = 200
    interval: float = 0.95


class SourceWeights(BaseModel):
    """One source's feedback on one pattern: weight per kind, Σ w², events."""

    model_config = ConfigDict(extra="forbid")

    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    w2: float = 0.0
    n: int = 0


class FeedbackState(VersionedState):
    """Feedback folded into one pattern, with the source offsets it holds (`applied`)."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    sources: dict[str, SourceWeights] = Field(default_factory=dict)
    events: int = 0
    suppressed: bool = False
    changed_at: float | None = None
    last_event_at: float | None = None
    applied: dict[str, int] = Field(default_factory=dict)


def new_state(pattern: str) -> FeedbackState:
    return FeedbackState(pattern=pattern)


def _polarity(feedback_type: str, is_correct: bool | None) -> str | None:
    if feedback_type == "true_positive" or (feedback_type == "user_override" and is_correct is True):
        return "tp"
    if feedback_type == "false_positive" or (feedback_type == "user_override" and is_correct is False):
        return "fp"
    if feedback_type == "false_negative":
        return "fn"
    return None  # an override without a verdict carries no information


def apply(state: FeedbackState, feedback_type: str, weight: float, is_correct: bool | None,
          source: str, at: float, policy: FeedbackPolicy = FeedbackPolicy()) -> FeedbackState:
    """Add one feedback event; returns the new state (the input is not mutated)."""
    state = state.model_copy(deep=True)
    state.events += 1
    state.last_event_at = at
    kind = _polarity(feedback_type, is_correct)
    if kind is None or weight <= 0:
        return state
    sources = state.sources
    if source not in sources and len(sources) >= policy.max_sources:
        source = OVERFLOW_SOURCE
    s = sources.setdefault(source, SourceWeights())
    setattr(s, kind, getattr(s, kind) + weight)
    if kind != "fn":
        s.w2 += weight * weight
    s.n += 1
    bad = summary(state, policy)["p_below_floor"]
    if not state.suppressed and bad > policy.suppress_at:
        state.suppressed, state.changed_at = True, at
    elif state.suppressed and bad < policy.resume_at:
        state.suppressed, state.changed_at = False, at
    return state


def _capped(state: FeedbackState, policy: FeedbackPolicy) -> tuple[float, float, float, float]:
    """Σ tp, Σ fp, Σ fn and Σ w² after scaling each source down to the cap."""
    tp = fp = fn = w2 = 0.0
    for s in state.sources.values():
        total = s.tp + s.fp
        scale = min(1.0, policy.source_cap / total) if total > 0 else 1.0
        tp += s.tp * scale
        fp += s.fp * scale
        w2 += s.w2 * scale * scale
        fn_scale = min(1.0, policy.source_cap / s.fn) if s.fn > 0 else 1.0
        fn += s.fn * fn_scale
    return tp, fp, fn, w2


def summary(state: FeedbackState, policy: FeedbackPolicy = FeedbackPolicy()) -> dict[str, Any]:
    tp, fp, fn, w2 = _capped(state, policy)
    total = tp + fp
    n_eff = total * total / w2 if w2 > 0 else 0.0
    share = tp / total if total > 0 else 0.5
    a = policy.prior_mean * policy.prior_strength + share * n_eff
    b = (1 - policy.prior_mean) * policy.prior_strength + (1 - share) * n_eff
    tail = (1 - policy.interval) / 2
    recall_n = tp + fn
    return {
        "pattern": state.pattern,
        "precision": round(a / (a + b), 4),
        "interval": [round(float(betaincinv(a, b, tail)), 4), round(float(betaincinv(a, b, 1 - tail)), 4)],
        "p_below_floor": round(float(betainc(a, b, policy.floor)), 4),
        "false_discovery_rate": round(b / (a + b), 4),
        "recall": round(tp / recall_n, 4) if recall_n > 0 else None,
        "n_eff": round(n_eff, 2),
        "weight": {"true_positive": round(tp, 3), "false_positive": round(fp, 3),
                   "false_negative": round(fn, 3)},
        "sources": len(state.sources),
        "events": state.events,
        "suppressed": state.suppressed,
        "floor": policy.floor,
    }
