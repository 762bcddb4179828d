"""Examination propensities of a position-based click model, estimated from logged clicks (plain numpy).

Under a position-based model (PBM) a row shown at position k is clicked with probability theta_k * gamma(x):
examined with the position's propensity theta_k, relevant with gamma(x). Logs show clicks, not which half
failed, so both halves are estimated together by regression EM (Wang et al. 2018, "Position Bias Estimation for
Unbiased Learning to Rank in Personal Search"): the E-step gives each unclicked row its posterior of having been
examined (theta (1 - gamma) / (1 - theta gamma)) and of being relevant; the M-step sets theta_k to the mean
examination posterior at k and refits the relevance regression on the relevance posteriors.

* `fit_examination`: the theta step alone, with relevance probabilities that are held fixed (exact when they are
  the true relevance; a check of the algebra more than a tool).
* `regression_em`: both steps, with the relevance a monotone function of a ranking score (quantile bins of the
  score): what `debias.method=ipw` runs on the network's scores after every epoch, and the evaluation's fallback
  for a model trained without propensities (`debias.method=none`).

Only ratios theta_j / theta_k are identified (theta * gamma is what clicks show), so propensities are reported
relative to the top position (theta_0 = 1: the top slot is taken to be always examined). Positions past
`n_positions - 1` share the last propensity. Why an estimate can still be off: relevance the regression cannot
explain but the logging policy saw (it put it on top) is attributed to the position -- no log-only estimator
escapes that without randomised or several logging policies (README, "Position bias").

`Propensities` is the JSON record (`propensity.json` beside a trained model) the evaluation reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["PROPENSITY_FILE", "Propensities", "fit_examination", "position_slots", "power_law", "regression_em"]

PROPENSITY_FILE = "propensity.json"


@dataclass(frozen=True)
class Propensities:
    """Examination probability per position relative to the top (theta[0] = 1), and where it came from."""

    theta: tuple[float, ...]
    source: str  # "pal" (the position tower), "ipw-em" (regression EM with the network), "em-scores" (binned EM)
    top: float = 1.0  # the estimate's own examination at the top before normalising (a tower restarts from it)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """theta at each 0-based position (deeper positions take the last value)."""
        th = np.asarray(self.theta, dtype=np.float64)
        return th[np.minimum(np.asarray(positions, dtype=np.int64), th.size - 1)]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PROPENSITY_FILE
        path.write_text(json.dumps(asdict(self) | {"theta": [round(float(t), 6) for t in self.theta]}))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Propensities | None:
        """The propensities saved beside a model, or None when it has none (trained without positions)."""
        path = Path(directory) / PROPENSITY_FILE
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return cls(tuple(float(t) for t in d["theta"]), str(d["source"]), float(d.get("top", 1.0)))

    @classmethod
    def relative(cls, theta: np.ndarray, source: str) -> Propensities:
        """From absolute estimates: divided by the top position's and clipped to (0, 1]."""
        th = np.asarray(theta, dtype=np.float64)
        top = max(float(th[0]), 1e-12)
        return cls(tuple(float(t) for t in np.clip(th / top, 1e-6, 1.0)), source, min(top, 1.0))

    def absolute(self) -> np.ndarray:
        """theta as the estimate had it (relative values times `top`)."""
        return np.asarray(self.theta, dtype=np.float64) * self.top


def position_slots(positions: np.ndarray, n_positions: int) -> np.ndarray:
    """0-based positions capped at `n_positions - 1` (deeper positions share the last slot), as int64."""
    return np.minimum(np.asarray(positions, dtype=np.int64), n_positions - 1)


def fit_examination(clicks: np.ndarray, positions: np.ndarray, relevance: np.ndarray, n_positions: int,
                    iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """Maximum-likelihood theta per position slot given relevance probabilities held fixed (EM's theta step
    iterated to its fixed point). Returns absolute estimates (not normalised); slots without rows keep 1."""
    c = np.asarray(clicks, dtype=np.float64) > 0
    k = position_slots(positions, n_positions)
    g = np.clip(np.asarray(relevance, dtype=np.float64), 1e-6, 1 - 1e-6)
    n = np.bincount(k, minlength=n_positions).astype(np.float64)
    clicked = np.bincount(k, weights=c.astype(np.float64), minlength=n_positions)
    theta = np.where(n > 0, np.clip(clicked / np.maximum(n, 1) / max(g.mean(), 1e-6), 0.01, 0.99), 1.0)
    for _ in range(iters):
        t = theta[k]
        examined_unclicked = np.where(c, 0.0, t * (1 - g) / (1 - t * g))
        new = np.where(n > 0, (clicked + np.bincount(k, weights=examined_unclicked, minlength=n_positions))
                       / np.maximum(n, 1), 1.0)
        new = np.clip(new, 1e-6, 1.0)
        done = np.max(np.abs(new - theta)) < tol
        theta = new
        if done:
            break
    return theta


def regression_em(clicks: np.ndarray, positions: np.ndarray, scores: np.ndarray, n_positions: int,
                  bins: int = 100, iters: int = 300, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Joint EM for theta per position slot and relevance per quantile bin of `scores` (any monotone ranking
    score). Returns (theta relative to the top slot, relevance of each row). The relevance is as good as the
    score's ordering: what the score misses and the logging policy knew ends up in theta."""
    c = np.asarray(clicks, dtype=np.float64) > 0
    k = position_slots(positions, n_positions)
    s = np.asarray(scores, dtype=np.float64)
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)[1:-1])) if s.size else np.zeros(0)
    b = np.searchsorted(edges, s, side="right")
    nb = edges.size + 1
    n_k = np.bincount(k, minlength=n_positions).astype(np.float64)
    n_b = np.bincount(b, minlength=nb).astype(np.float64)
    ctr_k = np.bincount(k, weights=c.astype(np.float64), minlength=n_positions) / np.maximum(n_k, 1)
    theta = np.where(n_k > 0, np.clip(ctr_k / max(ctr_k[0], 1e-6), 0.01, 0.99), 1.0)
    gamma = np.full(nb, 0.5)
    for _ in range(iters):
        t, g = theta[k], gamma[b]
        denom = 1 - t * g
        examined = np.where(c, 1.0, t * (1 - g) / denom)
        relevant = np.where(c, 1.0, (1 - t) * g / denom)
        new_t = np.where(n_k > 0, np.bincount(k, weights=examined, minlength=n_positions) / np.maximum(n_k, 1), 1.0)
        new_g = np.where(n_b > 0, np.bincount(b, weights=relevant, minlength=nb) / np.maximum(n_b, 1), 0.5)
        new_t, new_g = np.clip(new_t, 1e-6, 1.0), np.clip(new_g, 1e-6, 1 - 1e-6)
        done = max(np.max(np.abs(new_t - theta)), np.max(np.abs(new_g - gamma))) < tol
        theta, gamma = new_t, new_g
        if done:
            break
    return theta / max(float(theta[0]), 1e-12), gamma[b]


def power_law(theta: np.ndarray, fit_positions: int, n_positions: int | None = None) -> tuple[np.ndarray, float]:
    """theta_k = (1 + k) ** -eta, eta fitted (least squares on logs) to the estimates of positions
    1 .. fit_positions - 1 and extended to `n_positions` (default: as many as `theta`). Returns (theta, eta).

    The power law is the examination curve of the unbiased learning-to-rank literature (Joachims et al. 2017's
    (1/rank)^eta); fitting it on the top positions only keeps out the deep ones, where relevance is low, a
    relevance regression's relative error is largest and the most of it is credited to position. An assumption
    about the curve's shape: where it does not hold, use the estimates themselves."""
    th = np.asarray(theta, dtype=np.float64)
    n = th.size if n_positions is None else n_positions
    k = np.arange(1, min(fit_positions, th.size))
    ok = th[k] > 0
    if not ok.any():
        return th[:n] if th.size >= n else np.concatenate([th, np.full(n - th.size, th[-1])]), float("nan")
    x, y = np.log1p(k[ok]), np.log(th[k[ok]] / th[0])
    eta = float(-(x @ y) / (x @ x))  # through the origin: theta_0 = 1
    return (1.0 + np.arange(n)) ** -eta, eta
