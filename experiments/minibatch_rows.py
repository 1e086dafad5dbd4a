r"""The real-minibatch predictions of the linear-regression experiment (docs/theory.md section 7).

Beside the Gaussian-noise rows, the experiment compares SGD with real minibatches against the
exact second-moment theory :func:`numeric.minibatch_moments` (``closure="exact"`` up to
:data:`EXACT_MAX_WEIGHTS` weights, the mode-diagonal closure above): the stationary
``E||delta||^2`` over the learning-rate sweep, the top-mode velocity variances, and
``E||Delta_k||^2`` with its exponent. The sweep is extended to the predicted divergence edge
(:func:`numeric.minibatch_divergence_edge`), where real SGD is run just below and just above
it to see which runs keep finite second moments.

Everything here returns :class:`experiments.compare.Comparison` rows and plain curve dicts;
the experiment (:mod:`experiments.experiment`) runs SGD and writes the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import numeric

from .compare import Comparison, _mean_and_error

__all__ = ["EXACT_MAX_WEIGHTS", "EDGE_FRACTIONS", "MinibatchTheory", "speed_row",
           "velocity_variance_row", "displacement_rows", "edge_check", "speed_curve"]

#: Largest c * d solved with the exact operator in the experiment (digits: 640); above it the
#: mode-diagonal closure (within 1e-4 of exact on digits, see tests/numeric/test_minibatch.py).
EXACT_MAX_WEIGHTS = 3000
#: Real SGD is run at these multiples of the predicted edge.
EDGE_FRACTIONS = (0.9, 1.1)


@dataclass
class MinibatchTheory:
    """The exact real-minibatch theory of one data set at fixed ``beta, lam, batch_size``
    (batches without replacement, as the experiment's runner draws them)."""

    X: np.ndarray
    Y: np.ndarray
    beta: float
    lam: float
    batch_size: int
    closure: str = ""
    _edge: float | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.closure:
            weights = self.X.shape[1] * self.Y.shape[1]
            self.closure = "exact" if weights <= EXACT_MAX_WEIGHTS else "diagonal"

    @property
    def label(self) -> str:
        return "exact" if self.closure == "exact" else "mode-diagonal closure"

    def moments(self, eta: float) -> numeric.MinibatchMoments:
        return numeric.minibatch_moments(self.X, self.Y, eta=eta, beta=self.beta, lam=self.lam,
                                         batch_size=self.batch_size, closure=self.closure)

    @property
    def edge(self) -> float:
        """The learning rate where the second moments diverge."""
        if self._edge is None:
            self._edge = numeric.minibatch_divergence_edge(
                self.X, beta=self.beta, lam=self.lam, batch_size=self.batch_size,
                closure=self.closure)
        return self._edge


def speed_row(local_sq, theory: MinibatchTheory, *, eta: float, gaussian_edge: float,
              label: str = "") -> Comparison:
    """Stationary ``E||delta||^2`` of real-minibatch SGD (``local_sq`` ``(R, seeds)``) against
    the minibatch theory; standard error across seeds."""
    measured, error = _mean_and_error(np.asarray(local_sq).mean(0))
    moments = theory.moments(eta)
    return Comparison(
        f"stationary E||delta||^2 [minibatch, {theory.label} theory]{label}, eta={eta:.3g} "
        f"({eta / gaussian_edge:.0%} of edge)", moments.speed, float(measured), float(error),
        {"eta": eta, "radius": moments.radius, "minibatch_edge_eta": theory.edge,
         "closure": theory.closure})


def _direction_weights(directions, moments: numeric.MinibatchMoments, c: int) -> np.ndarray:
    """``(m, c, d)``: squared overlaps of each direction with the modes ``e_j (x) q_l``."""
    d = moments.eigenvectors.shape[0]
    return np.einsum("mjk,kl->mjl", np.asarray(directions).reshape(-1, c, d),
                     moments.eigenvectors) ** 2


def velocity_variance_row(b_window, directions, moments: numeric.MinibatchMoments, *,
                          label: str = "") -> tuple[Comparison, np.ndarray]:
    r"""``sum Var(b)`` over the recorded directions against the minibatch theory.

    A direction ``q`` gets ``sum_p <q, e_j (x) q_l>^2 Var(v_p)``: exact for a direction along one
    mode and for the sum over whole eigenspaces (the trace), which is what the top-``m``
    directions of ``I_c (x) H`` span when ``m`` is a multiple of ``c``.
    """
    c = moments.var_v.shape[0]
    predicted = np.einsum("mjl,jl->m", _direction_weights(directions, moments, c),
                          moments.var_v)
    per_seed = np.asarray(b_window).var(axis=0).sum(-1)
    measured, error = _mean_and_error(per_seed)
    m = predicted.size
    return Comparison(f"sum Var(b) top {m}{label}, real minibatch theory ({moments.closure})",
                      float(predicted.sum()), float(measured), float(error),
                      {"radius": moments.radius}), predicted


def displacement_rows(global_sq, steps, moments: numeric.MinibatchMoments, *,
                      window: float = 2 / 3) -> tuple[list[Comparison], dict]:
    """``E||Delta_k||^2`` and its fitted exponent against the minibatch theory (same estimator
    and window as ``compare.compare_global_displacement``)."""
    steps = np.asarray(steps, dtype=np.float64)
    keep = steps > 0
    steps, global_sq = steps[keep], np.asarray(global_sq)[keep]
    mean, error = _mean_and_error(global_sq)
    predicted = moments.global_displacement(steps)
    fit_measured = numeric.fit_power_law(steps, mean, window=window,
                                         rng=np.random.default_rng(0))
    fit_predicted = numeric.fit_power_law(steps, predicted, window=window,
                                          rng=np.random.default_rng(0))
    name = f"[minibatch, {moments.closure}]"
    rows = [
        Comparison(f"E||Delta_k||^2 {name} at k={int(steps[-1])}", float(predicted[-1]),
                   float(mean[-1]), float(error[-1]), {"radius": moments.radius}),
        Comparison(f"E||Delta_k||^2 exponent c {name} (last {window:.2g} of k)",
                   float(fit_predicted.exponent), float(fit_measured.exponent),
                   float(fit_measured.standard_error), {"window": window}),
    ]
    return rows, {"predicted_minibatch": predicted,
                  "fit_predicted_minibatch": tuple(fit_predicted)}


def edge_check(local_sq, theory: MinibatchTheory, *, eta: float) -> Comparison:
    r"""Did real SGD at ``eta`` keep finite second moments, as predicted?

    Coded 1 for finite second moments, 2 for moments that grow without bound (so that the
    relative error is finite: 0 when the run agrees with the prediction). Predicted: 2 if
    ``eta`` is beyond the edge. Measured: 2 if ``||delta_k||^2`` became non-finite, or its seed
    mean over the last quarter of
    the run exceeds twice that over the second quarter (the expected value grows geometrically
    beyond the edge; below it the mean is stationary after the burn-in). Near the edge the
    law is heavy-tailed on both sides, so the table also gives the growth ratio.
    """
    local = np.asarray(local_sq, dtype=np.float64)
    finite = bool(np.all(np.isfinite(local)))
    quarter = max(local.shape[0] // 4, 1)
    with np.errstate(over="ignore", invalid="ignore"):
        early = float(local[quarter:2 * quarter].mean()) if finite else float("nan")
        late = float(local[-quarter:].mean()) if finite else float("nan")
    growth = late / early if finite and early > 0 else float("inf")
    diverged = (not finite) or growth > 2.0
    beyond = eta > theory.edge
    return Comparison(
        f"minibatch edge: moments at {eta / theory.edge:.2f} x predicted edge "
        f"(eta={eta:.3g}; 1 finite, 2 diverging)", 1.0 + beyond, 1.0 + diverged, 0.0,
        {"eta": eta, "minibatch_edge_eta": theory.edge, "growth_last_vs_second_quarter":
         growth if np.isfinite(growth) else None, "finite": finite,
         "agrees": beyond == diverged})


def speed_curve(theory: MinibatchTheory, *, lowest: float, points: int = 40) -> dict:
    """Predicted stationary ``E||delta||^2`` on a log grid from ``lowest`` up to 0.995 of the
    edge (for Fig. 2), by the mode-diagonal closure (one d x d solve a point; within 1e-4 of
    the exact solution on digits away from the edge, 0.6% at radius 0.84), with ``theory``'s
    own edge marked."""
    closure = MinibatchTheory(theory.X, theory.Y, theory.beta, theory.lam, theory.batch_size,
                              closure="diagonal")
    grid = np.geomspace(lowest, 0.995 * min(theory.edge, closure.edge), points)
    speed = np.array([closure.moments(float(e)).speed for e in grid])
    return {"eta": grid, "speed": speed, "edge": theory.edge, "closure": "diagonal",
            "batch_size": theory.batch_size}


def stationary_rows(theory: MinibatchTheory, *, eta, b_window, directions, global_sq,
                    lag_steps, log=print) -> tuple[list[Comparison], dict]:
    """The phase-1 rows (velocity variances, E||Delta_k||^2 and its exponent) at ``eta``;
    none, with a log line, when ``eta`` is beyond the predicted edge."""
    try:
        moments = theory.moments(eta)
    except ValueError as error:
        log(f"[linreg] no real-minibatch rows at eta={eta:.4g}: {error}")
        return [], {}
    row, _ = velocity_variance_row(b_window, directions, moments)
    rows, curves = displacement_rows(global_sq, lag_steps, moments)
    return [row, *rows], curves


def edge_runs(problem, theory: MinibatchTheory, *, gaussian_edge, burn_in, num_steps,
              run_kwargs, log=print) -> tuple[list[Comparison], dict]:
    """Real SGD at :data:`EDGE_FRACTIONS` of the predicted edge (from ``mu``, ``burn_in`` +
    ``num_steps`` steps, ``run_kwargs`` passed on to :func:`experiments.linreg.run_sgd`):
    one :func:`edge_check` row each, plus the speed row below the edge."""
    from .linreg import run_sgd

    rows, measured = [], {"eta": [], "mean": [], "diverged": []}
    for fraction in EDGE_FRACTIONS:
        eta = fraction * theory.edge
        with np.errstate(over="ignore", invalid="ignore"):
            traj = run_sgd(problem, eta=eta, num_steps=burn_in + num_steps, **run_kwargs)
        local = traj.local_sq[traj.steps >= burn_in]
        row = edge_check(local, theory, eta=eta)
        rows.append(row)
        if eta < theory.edge and np.all(np.isfinite(local)):
            rows.append(speed_row(local, theory, eta=eta, gaussian_edge=gaussian_edge,
                                  label=" near its edge"))
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(np.mean(local)) if np.all(np.isfinite(local)) else float("inf")
        measured["eta"].append(eta)
        measured["mean"].append(mean)
        measured["diverged"].append(row.measured == 2)
        log(f"[linreg] real SGD at {fraction:g} x the predicted minibatch edge (eta={eta:.4g}): "
            f"{'diverged' if row.measured == 2 else 'finite'} (predicted "
            f"{'diverges' if row.predicted == 2 else 'finite'}; growth "
            f"{row.details['growth_last_vs_second_quarter']})")
    return rows, {k: np.asarray(v) for k, v in measured.items()}
