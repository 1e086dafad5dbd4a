r"""The linear-regression experiment end to end: data -> SGD runs -> comparisons -> outputs.

:func:`run_linreg` runs four phases and writes each one's arrays to ``out_dir`` as soon as it
finishes (a killed run keeps what it had):

1. ``stationary.npz``: SGD at ``(eta, beta)`` started at the ridge solution ``mu``, a burn-in,
   then a stationary window; feeds comparisons 3 (velocity autocorrelation), 4 (global
   displacement), 5 (equipartition) and 6 (noise covariance).
2. ``transient.npz``: SGD at each ``beta`` of ``transient_betas`` started displaced along the
   top eigenvectors; comparison 1 (mean trajectory, the paper's Fig. 2).
3. ``sweep.npz``: stationary ``E||delta||^2`` over learning rates up to near the stability edge
   ``eta h_max < 2 (1 + beta)``; comparison 2.
4. the 2-D OU example of the paper's Fig. 3 (comparison 7).

Then ``summary.json`` (settings, seeds, package versions, the comparison rows),
``report.md`` and the PNG figures (:mod:`experiments.figures`).

Every run is also written to ``trajectories/<phase>/`` in the trajectory format of
:func:`numeric.load_trajectory` (seeds as the second axis), and the comparisons read only that,
the exact :class:`numeric.Spectrum` (top ``num_directions`` eigenpairs plus the exact bulk),
the hyperparameters and a noise model (:mod:`experiments.compare`, second half): the same
functions a network experiment calls with a partial spectrum.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import numeric

from . import compare, figures, minibatch_rows, report
from .data import DATASETS, load_dataset
from .linreg import BACKENDS, NOISE_MODELS, effective_batch_size, least_squares, run_sgd

__all__ = ["LinregConfig", "DEMO_CONFIG", "default_out_dir", "stability_edge",
           "speed_burn_in", "displacement_burn_in", "run_linreg"]


@dataclass
class LinregConfig:
    """Settings of :func:`run_linreg` (all recorded in ``summary.json``).

    ``eta`` defaults to ``eta_fraction`` of the stability edge ``2 (1 + beta) / h_max`` of the
    data set. ``steps`` is the stationary window after the burn-in; ``seeds`` the number of
    independent runs per phase (batched); ``seed`` the base seed of data shuffling and noise.
    ``num_directions`` top Hessian eigenvectors are recorded every step. ``burn_in`` (steps
    before the stationary window) defaults to the larger of :func:`speed_burn_in` and
    :func:`displacement_burn_in`.
    """

    dataset: str = "mnist5k"
    data_dir: str | None = None
    num_samples: int | None = None
    eta: float | None = None
    eta_fraction: float = 0.1
    beta: float = 0.9
    transient_betas: tuple = (0.9, 0.99)
    lam: float = 0.0
    batch_size: int = 128
    steps: int = 4000
    seeds: int = 16
    seed: int = 0
    num_directions: int = 30
    sweep_fractions: tuple = (0.05, 0.2, 0.4, 0.6, 0.8, 0.9)
    sweep_steps: int = 1500
    transient_damping_times: float = 4.0
    displacement_amplitude: float = 20.0
    noise: str = "minibatch"
    backend: str = "numpy"
    device: str | None = None
    loss_every: int = 10
    burn_in: int | None = None
    synthetic: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range setting."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, but got {self.dataset!r}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, but got {self.noise!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, but got {self.backend!r}")
        for beta in (self.beta, *self.transient_betas):
            if not 0 <= beta < 1:
                raise ValueError(f"beta must be in [0, 1), but got {beta}")
        if self.eta is not None and not self.eta > 0:
            raise ValueError(f"eta must be > 0, but got {self.eta}")
        if not 0 < self.eta_fraction < 1:
            raise ValueError(f"eta_fraction must be in (0, 1), but got {self.eta_fraction}")
        if any(not 0 < f < 1 for f in self.sweep_fractions):
            raise ValueError(f"sweep_fractions must lie in (0, 1), but got "
                             f"{self.sweep_fractions}")
        for name in ("steps", "seeds", "num_directions", "sweep_steps", "batch_size"):
            value = getattr(self, name)
            minimum = 2 if name == "seeds" else 1
            if not (isinstance(value, int) and value >= minimum):
                raise ValueError(f"{name} must be an integer >= {minimum}, but got {value!r}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, but got {self.lam}")
        if self.burn_in is not None and not (isinstance(self.burn_in, int) and self.burn_in >= 0):
            raise ValueError(f"burn_in must be None (automatic) or an integer >= 0, but got "
                             f"{self.burn_in!r}")


# `make demo`: mnist5k with everything, about 1 minute of CPU time (58 s measured).
DEMO_CONFIG = LinregConfig(dataset="mnist5k", steps=1500, seeds=8, sweep_steps=600,
                           sweep_fractions=(0.05, 0.2, 0.5, 0.8, 0.9))


def default_out_dir(dataset: str) -> Path:
    """``runs/linreg-<dataset>-<UTC timestamp>/`` (``runs/`` is git-ignored)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"linreg-{dataset}-{stamp}"


def stability_edge(h_max: float, beta: float) -> float:
    """The largest stable learning rate, ``2 (1 + beta) / h_max`` (docs/theory.md section 6)."""
    return 2.0 * (1.0 + beta) / h_max


def speed_burn_in(spectrum, *, eta, beta, lam=0.0, tol=1e-3, max_steps=100_000) -> int:
    r"""Steps after which ``E||delta_k||^2`` from a start at ``(mu, 0)`` is within ``tol``
    (relative) of its stationary value, by the exact discrete covariance recursion
    (:func:`experiments.compare.transient_mode_covariance`) on the distinct eigenvalues
    (``Sigma = sigma^2 H``; the noise scale cancels in the ratio). Capped at ``max_steps``."""
    rho = np.unique(compare.positive_spectrum(spectrum))
    _, target = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam, S=1.0,
                                            sigma2=1.0, model="discrete")
    target = float(np.sum(target))
    M = compare._mode_propagator(rho, eta, beta, lam)
    Mt = np.swapaxes(M, -1, -2)
    GG = np.array([[eta * eta, eta], [eta, 1.0]]) * rho[:, None, None]
    P = np.zeros_like(M)
    for k in range(1, max_steps + 1):
        P = M @ P @ Mt + GG
        if abs(P[:, 1, 1].sum() - target) <= tol * target:
            return k
    return max_steps


def displacement_burn_in(spectrum, max_lag, *, eta, beta, lam=0.0, tol=1e-3,
                         max_steps=1_000_000) -> int:
    r"""Steps ``B`` after which ``E||theta_{B+K} - theta_B||^2`` from a start at ``(mu, 0)`` is
    within ``tol`` (relative) of its stationary value at every lag ``K <= max_lag``.

    Exact for the discrete recursion (docs/theory.md section 6) with ``Sigma = sigma^2 H``: with
    ``P_n = P - M^n P M^{nT}`` the covariance ``n`` steps after a deterministic start and
    ``Cov(z_{B+K}, z_B) = M^K P_B``, the deficit of one mode's displacement is

    .. math:: E\|\Delta\|^2_{ss} - E\|\Delta\|^2_B
              = [(M^K - I)\, M^B P M^{BT} (M^K - I)^T]_{aa} \ge 0 .

    Slow modes relax over many steps but, at lags shorter than their relaxation time, add little
    to the displacement; this weighs each mode's deficit by what it adds, which
    :func:`speed_burn_in` (velocities only) does not. The noise scale cancels in the ratio.
    ``B`` is found by bisection on a doubling bracket; underdamped modes make the deficit
    oscillate in ``B``, so a smaller ``B`` may pass too, but the returned one always does."""
    rho, count = np.unique(compare.positive_spectrum(spectrum), return_counts=True)
    var_a, var_v = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam, S=1.0,
                                               sigma2=1.0, model="discrete")
    P = np.empty(rho.shape + (2, 2))
    P[:, 0, 0], P[:, 1, 1] = var_a, var_v
    P[:, 0, 1] = P[:, 1, 0] = 0.5 * eta * var_v  # P_av = eta P_vv / 2 (section 6)
    M = compare._mode_propagator(rho, eta, beta, lam)
    lags = np.unique(np.geomspace(1, max(int(max_lag), 1), 24).astype(int))
    # first row of M^K - I, (lags, modes, 2): the position part of z_{B+K} - z_B
    row = np.stack([np.linalg.matrix_power(M, int(K))[:, 0, :] for K in lags])
    row[..., 0] -= 1.0
    stationary = np.einsum("kmj,mjl,kml->km", row, P, row) @ count  # E||Delta_K||^2_ss

    def deficit(B):
        MB = np.linalg.matrix_power(M, int(B))
        X = MB @ P @ np.swapaxes(MB, -1, -2)
        return np.einsum("kmj,mjl,kml->km", row, X, row) @ count

    def relaxed(B):
        return bool(np.all(deficit(B) <= tol * stationary))

    if relaxed(0):
        return 0
    high = 1
    while not relaxed(high):
        if high >= max_steps:
            return max_steps
        high = min(2 * high, max_steps)
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if relaxed(mid) else (mid, high)
    return high


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "torch", "matplotlib", "scikit-learn", "mlxtend", "ousym"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _save(out_dir: Path, name: str, arrays: dict) -> str:
    np.savez_compressed(out_dir / name, **{k: np.asarray(v) for k, v in arrays.items()})
    return name


def _finite(x) -> bool:
    return bool(np.all(np.isfinite(x)))


def _write_trajectory(path: Path, run, *, problem, directions, modes, window_start,
                      effective_batch_size):
    """One run of :func:`experiments.linreg.run_sgd` in the trajectory format (seeds as the
    second axis), read back lazily. ``theta_projection`` is about the minimum ``mu``;
    ``global_displacement_sq`` about the state at ``displacement_from``; ``excess_loss`` is
    NaN at steps where it was not computed. A folder left by an earlier run is replaced."""
    import shutil

    if path.exists():
        shutil.rmtree(path)
    settings = run.settings
    excess = np.full(run.local_sq.shape, np.nan)
    if run.loss_steps.size:
        excess[np.searchsorted(run.steps, run.loss_steps)] = run.excess_loss
    arrays = {"step": run.steps, "local_displacement_sq": run.local_sq,
              "global_displacement_sq": run.global_sq, "theta_projection": run.a,
              "velocity_projection": run.b, "excess_loss": excess}
    manifest = numeric.trajectory_manifest(
        eta=settings["eta"], beta=settings["beta"], lam=settings["lam"],
        S=settings["batch_size"], settings=settings | {
            "effective_batch_size": effective_batch_size, "window_start": window_start},
        dtype="float64", directions=directions, reference=problem.mu,
        axis={"name": "seeds", "size": settings["num_seeds"], "stream_seed": settings["seed"]},
        arrays=[key for key in arrays if key != "step"],
        modes=None if modes is None else [int(m) for m in modes], kind="linreg")
    return numeric.load_trajectory(numeric.write_trajectory(path, arrays, manifest=manifest))


def run_linreg(config: LinregConfig, out_dir=None, *, progress: bool = True,
               log=print) -> dict:
    """Run the whole experiment, write its outputs to ``out_dir`` and return the summary.

    Raises ValueError for invalid settings (see :meth:`LinregConfig.validate`) and the data
    loaders' errors for missing or malformed data.
    """
    config.validate()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config.dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                        num_samples=config.num_samples, **config.synthetic)
    problem = least_squares(data.X, data.Y, lam=config.lam)
    n, d = data.X.shape
    c = data.num_outputs
    m = min(config.num_directions, c * d)
    # The exact spectrum as the shared type: top m eigenpairs (the recorded directions) and
    # the rest as an exact bulk; the comparisons read only it, the trajectories on disk and
    # the hyperparameters.
    top_spectrum = numeric.spectrum_from_least_squares(data.X, num_outputs=c, k=m)
    directions, rho_top = np.asarray(top_spectrum.eigenvectors), top_spectrum.eigenvalues
    spectrum = problem.spectrum
    S_eff = effective_batch_size(config.batch_size, n, config.noise)
    lam, beta = config.lam, config.beta

    # Noise: Sigma(mu) projected on the top directions, and sigma^2 for Assumption 5.
    sigma_top = compare.projected_noise_covariance(data.X, data.Y, problem.mu, directions)
    fit = numeric.noise_scale_fit(sigma_top, rho_top)
    trace_sigma = compare.noise_trace(data.X, data.Y, problem.mu)
    sigma2_trace = trace_sigma / spectrum.sum()
    if config.noise == "gaussian":
        sigma2 = float(data.info.get("sigma2", sigma2_trace))
        mode_noise = sigma2 * rho_top
    else:
        # tr Sigma / tr H makes eq. (12) exact in the SDE for any Sigma (tr Cov(v) = tr
        # Sigma / kappa follows from the Lyapunov equation), the natural single scale.
        sigma2 = float(sigma2_trace)
        mode_noise = np.diag(sigma_top).copy()
    run_sigma2 = sigma2 if config.noise == "gaussian" else None
    isotropic = numeric.IsotropicNoise(sigma2)
    # the top modes' own noise variances where the noise is measured, Assumption 5 elsewhere
    mode_noise_model = isotropic if config.noise == "gaussian" else numeric.PerModeNoise(
        mode_noise, sigma2)

    h_max = float(spectrum.max() + lam)
    eta = config.eta if config.eta is not None else config.eta_fraction * stability_edge(
        h_max, beta)
    settings = dataclasses.asdict(config) | {
        "eta": eta, "effective_batch_size": S_eff, "sigma2": sigma2,
        "sigma2_fit_top_subspace": fit.sigma2, "num_samples": n, "num_features": d,
        "num_outputs": c, "num_directions": m, "top_eigenvalues": rho_top.tolist(),
        "stability_edge_eta": stability_edge(h_max, beta), "out_dir": str(out_dir)}
    common = dict(batch_size=config.batch_size, noise=config.noise, sigma2=run_sigma2,
                  backend=config.backend, device=config.device, progress=progress)
    rows, curves, arrays_written = [], {}, []
    hyper = compare.Hyperparameters(eta=eta, beta=beta, batch_size=S_eff, lam=lam)

    def write_run(name, run, *, modes=None, window_start=0):
        return _write_trajectory(out_dir / "trajectories" / name, run, problem=problem,
                                 directions=directions if modes is None else directions[modes],
                                 modes=modes, window_start=window_start,
                                 effective_batch_size=effective_batch_size(
                                     run.settings["batch_size"], n, run.settings["noise"]))
    log(f"[linreg] {config.dataset}: N={n}, d={d}, c={c}, eta={eta:.4g}, beta={beta}, "
        f"S={config.batch_size} (effective {S_eff:.4g}), sigma^2={sigma2:.4g}, "
        f"{config.seeds} seeds -> {out_dir}")

    # --- phase 1: stationary run at (eta, beta) ------------------------------------------
    relax_top = float(np.max(compare.relaxation_steps(rho_top, eta=eta, beta=beta, lam=lam)))
    # The displacement rows need every mode that adds to E||Delta_k||^2 over the window relaxed,
    # not only the velocities: a bias of 0.2% stays well below the seeds' standard error (~1%).
    burn_in = config.burn_in if config.burn_in is not None else max(
        int(math.ceil(5 * relax_top)),
        speed_burn_in(spectrum, eta=eta, beta=beta, lam=lam),
        displacement_burn_in(spectrum, config.steps, eta=eta, beta=beta, lam=lam, tol=2e-3))
    traj = run_sgd(problem, eta=eta, beta=beta, num_steps=burn_in + config.steps,
                   num_seeds=config.seeds, seed=config.seed + 1, directions=directions,
                   loss_every=config.loss_every, displacement_from=burn_in, **common)
    window = traj.steps >= burn_in
    loss_window = traj.loss_steps >= burn_in
    arrays_written.append(_save(out_dir, "stationary.npz", traj.arrays() | {
        "burn_in": burn_in, "directions_eigenvalues": rho_top}))
    stationary_ok = _finite(traj.a) and _finite(traj.global_sq)
    if not stationary_ok:
        raise FloatingPointError(
            f"SGD diverged at eta={eta:g}, beta={beta}: lower --eta (stability edge "
            f"{stability_edge(h_max, beta):.4g}; minibatch noise destabilises earlier)")
    # Distinct top eigenvalues: the first direction of each (c outputs share one rho).
    distinct = np.unique(np.round(rho_top, 12), return_index=True)[1]
    distinct = np.sort(distinct)[:3]
    b_win = traj.b[window]
    max_lag = int(min(5 * (1 + beta) / (1 - beta), b_win.shape[0] // 4))
    stationary = write_run("stationary", traj, window_start=burn_in)
    on_disk = dict(spectrum=top_spectrum, hyper=hyper, window_start=burn_in)
    row, curves["velocity"] = compare.velocity_correlation_comparison(
        stationary, modes=distinct, max_lag=max_lag, **on_disk)
    rows.append(row)
    lag_steps = traj.steps[window] - burn_in
    disp_rows, curves["displacement"] = compare.global_displacement_comparison(
        stationary, noise=isotropic, **on_disk)
    rows.extend(disp_rows)
    # Equipartition on the recorded top modes (relaxed within the burn-in) and in full.
    rows.append(compare.equipartition_comparison(stationary, source="projections",
                                                 label=f" (top {m} modes)", **on_disk))
    if config.loss_every:
        rows.append(compare.equipartition_comparison(stationary, source="loss",
                                                     label=" (all modes)", **on_disk))
    noise_rows, curves["noise"] = compare.noise_covariance_comparison(
        stationary, noise=isotropic, projected_covariance=sigma_top, **on_disk)
    noise_rows[0].details.update(relative_mismatch=fit.relative_mismatch,
                                 sigma2_fit_top_subspace=fit.sigma2,
                                 sigma2_trace=sigma2_trace)
    rows.extend(noise_rows)
    # Real minibatches: the exact second-moment theory (docs/theory.md section 7).
    minibatch = minibatch_rows.MinibatchTheory(data.X, data.Y, beta, lam, config.batch_size) \
        if config.noise == "minibatch" and config.batch_size < n else None
    if minibatch is not None:
        mb_rows, mb_curves = minibatch_rows.stationary_rows(
            minibatch, eta=eta, b_window=b_win, directions=directions,
            global_sq=traj.global_sq[window], lag_steps=lag_steps, log=log)
        rows.extend(mb_rows)
        curves["displacement"] |= mb_curves
    curves["equipartition"] = {"steps": traj.loss_steps[loss_window],
                               "excess_loss": traj.excess_loss[loss_window].mean(1),
                               "kinetic": 0.25 * eta * (1 + beta) * traj.velocity_sq_at_loss[
                                   loss_window].mean(1)}
    del traj

    # --- phase 2: transients from a displaced start, per beta ----------------------------
    transient_arrays = {}
    curves["mean"] = {}
    for beta_t in config.transient_betas:
        # Same effective learning rate eta / (1 - beta) at every beta: the stationary noise
        # level and the state-dependent part of real minibatch noise both scale with it, so a
        # larger beta at the same eta would leave the regime where Sigma is fixed (at beta =
        # 0.99 and the default eta, minibatch SGD on mnist5k grows without bound).
        eta_t = eta * (1.0 - beta_t) / (1.0 - beta)
        var_a, _ = numeric.stationary_variance(rho_top, eta=eta_t, beta=beta_t, lam=lam,
                                               S=S_eff, sigma2=1.0, model="discrete")
        var_a = np.asarray(var_a) * mode_noise / np.where(rho_top > 0, rho_top, 1.0)
        a0 = config.displacement_amplitude * np.sqrt(var_a)
        theta0 = problem.mu + (a0 @ directions).reshape(c, d)
        num_steps = int(math.ceil(config.transient_damping_times * float(np.max(
            compare.relaxation_steps(rho_top[distinct], eta=eta_t, beta=beta_t, lam=lam)))))
        tr = run_sgd(problem, eta=eta_t, beta=beta_t, num_steps=num_steps,
                     num_seeds=config.seeds, seed=config.seed + 2, theta0=theta0,
                     directions=directions[distinct], **common)
        transient_arrays |= tr.arrays(prefix=f"beta{beta_t:g}_") | {f"beta{beta_t:g}_a0": a0}
        row, curves["mean"][beta_t] = compare.mean_trajectory_comparison(
            write_run(f"transient_beta{beta_t:g}", tr, modes=distinct), top_spectrum,
            dataclasses.replace(hyper, eta=eta_t, beta=beta_t), mode_noise_model,
            a0=a0[distinct], modes=distinct, label=f" beta={beta_t:g} eta={eta_t:.3g}")
        rows.append(row)
    arrays_written.append(_save(out_dir, "transient.npz", transient_arrays))

    # --- phase 3: stationary speed over eta up to near the stability edge ----------------
    # Gaussian noise N(0, sigma^2 H / S) is where the discrete theory is exact: it must hold
    # up to the edge while the SDE departs. Real minibatches add a state-dependent Sigma(theta)
    # that grows with theta - mu, so they leave both theories before the edge.
    sweep_noises = ("gaussian", "minibatch") if config.noise == "minibatch" else ("gaussian",)
    sweep = {}

    def part_scale(eta_f, s_sweep):
        return float(numeric.instantaneous_speed(compare.positive_spectrum(spectrum), eta=eta_f,
                                                 beta=beta, lam=lam, S=s_sweep, sigma2=sigma2,
                                                 model="discrete"))

    for sweep_noise in sweep_noises:
        S_sweep = effective_batch_size(config.batch_size, n, sweep_noise)
        part = {"eta": [], "measured": [], "stderr": [], "discrete": [], "sde": []}
        for fraction in config.sweep_fractions:
            eta_f = fraction * stability_edge(h_max, beta)
            burn = speed_burn_in(spectrum, eta=eta_f, beta=beta, lam=lam)
            tr = run_sgd(problem, eta=eta_f, beta=beta, num_steps=burn + config.sweep_steps,
                         num_seeds=config.seeds, seed=config.seed + 3,
                         **(common | {"noise": sweep_noise, "sigma2": sigma2}))
            local = tr.local_sq[tr.steps >= burn]
            if not _finite(local) or local.mean() > 1e6 * part_scale(eta_f, S_sweep):
                # Larger eta only diverges faster: stop this noise model's sweep here.
                log(f"[linreg] {sweep_noise} eta={eta_f:.4g} diverged (state-dependent "
                    "minibatch noise); larger eta left out of the sweep")
                break
            row = compare.stationary_speed_comparison(
                write_run(f"sweep_{sweep_noise}_{fraction:g}", tr, window_start=burn),
                top_spectrum, compare.Hyperparameters(eta=eta_f, beta=beta,
                                                      batch_size=S_sweep, lam=lam),
                isotropic, window_start=burn, label=f" [{sweep_noise}]")
            rows.append(row)
            if sweep_noise == "minibatch" and minibatch is not None and eta_f < minibatch.edge:
                rows.append(minibatch_rows.speed_row(local, minibatch, eta=eta_f,
                                                     gaussian_edge=stability_edge(h_max, beta)))
            for key, value in (("eta", eta_f), ("measured", row.measured),
                               ("stderr", row.standard_error), ("discrete", row.predicted),
                               ("sde", row.details["sde"])):
                part[key].append(value)
            if progress:
                log(f"[linreg] sweep {sweep_noise} eta={eta_f:.4g}: measured "
                    f"{row.measured:.4g} +- {row.standard_error:.2g}, discrete "
                    f"{row.predicted:.4g}, SDE {row.details['sde']:.4g}")
        sweep[sweep_noise] = {k: np.asarray(v) for k, v in part.items()} | {
            "batch_size": S_sweep}
    curves["sweep"] = {"noises": sweep, "edge": stability_edge(h_max, beta),
                       "spectrum": compare.positive_spectrum(spectrum), "beta": beta,
                       "lam": lam, "sigma2": sigma2}
    if minibatch is not None:
        # The sweep reaches the predicted edge: real SGD just below and just above it.
        edge_rows, edge_runs = minibatch_rows.edge_runs(
            problem, minibatch, gaussian_edge=stability_edge(h_max, beta),
            burn_in=speed_burn_in(spectrum, eta=0.9 * minibatch.edge, beta=beta, lam=lam),
            num_steps=config.sweep_steps, log=log, run_kwargs=dict(
                beta=beta, batch_size=config.batch_size, num_seeds=config.seeds,
                seed=config.seed + 4, backend=config.backend, device=config.device,
                progress=progress))
        rows.extend(edge_rows)
        curves["sweep"]["minibatch_theory"] = minibatch_rows.speed_curve(
            minibatch, lowest=config.sweep_fractions[0] * stability_edge(h_max, beta) / 2) | {
            "runs": edge_runs}
    arrays_written.append(_save(out_dir, "sweep.npz", {
        f"{noise}_{k}": v for noise, part in sweep.items() for k, v in part.items()}))

    # --- phase 4: the 2-D OU example ------------------------------------------------------
    row, curves["ou2d"] = compare.ou_2d_example(seed=config.seed)
    rows.append(row)

    figure_files = figures.make_all(curves, out_dir, settings)
    summary = {
        "experiment": "linreg",
        "dataset": config.dataset,
        "data": {k: v for k, v in data.info.items() if k != "theta_star"},
        "settings": settings,
        "seeds": {"base_seed": config.seed, "num_seeds": config.seeds,
                  "stationary_stream": config.seed + 1, "transient_stream": config.seed + 2,
                  "sweep_stream": config.seed + 3,
                  "note": "runs of one phase share one random stream (batched)"},
        "burn_in": burn_in,
        "versions": _versions(),
        "comparisons": [r.to_dict() for r in rows],
        "figures": figure_files,
        "arrays": arrays_written,
    }
    report.write_outputs(summary, out_dir)
    return summary
