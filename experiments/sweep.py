r"""Hyperparameter sweeps (the paper's Fig. 6) with uncalibrated predictions, as independent tasks.

A sweep varies one hyperparameter (``eta``, ``batch-size``, ``beta`` or ``lam``) around a
default configuration. Every value is an independent *task* with its own run folder; nothing
is shared between tasks but the read-only ``shared/`` folder, so tasks run in any order, in
parallel (``--jobs N``: subprocesses on one machine) or as the indexed tasks of a scheduler
(``--task-index I`` or ``SLURM_ARRAY_TASK_ID``: a Slurm job array runs one task per array
element). Layout of a sweep folder::

    sweep.json              the manifest: experiment, varied setting, values, default
                            configuration and the configuration of every task (JSON)
    shared/                 what every task reuses, computed once at the default
                            configuration: the start point, the spectrum and the noise trace
    tasks/000-eta=0.01/     one run folder per task: the runner's outputs, summary.json,
                            then the ``done`` marker
    summary.json, fig6_sweep.png    written by ``--summarize``

Every file is written atomically (temporary file, then ``os.replace``), so a killed process
leaves either the old file or the complete new one. The ``done`` marker of a task is written
only after its ``summary.json``: a task with the marker is never rerun; a task without it is
rerun with ``resume=True`` (runners that checkpoint continue where they stopped; the
linear-regression task is cheap and restarts). Two processes that compute ``shared/`` at the
same time each write a private folder and rename it into place; the first rename wins and
the other copy is discarded (the computation is deterministic).

The predictions are *uncalibrated*: no constant is fitted to any run of the sweep. For each
run, from the :class:`numeric.Spectrum` of the shared start point (exact for linear
regression; top-k eigenpairs and an SLQ bulk for a network) and the noise measured there,

* the stationary speed :math:`E\|\delta\|^2` is eq. (12) with the exact discrete factor
  (``numeric.predicted_speed(..., model="discrete")``, docs/theory.md sections 5-6) for the
  run's :math:`\eta, \beta, \lambda, S`, with the noise model of Assumption 5,
  :math:`\Sigma = \sigma^2 H`, :math:`\sigma^2 = \mathrm{tr}\,\Sigma / \mathrm{tr}\,H`
  (``numeric.IsotropicNoise``; with this single scale eq. (12) is exact in the SDE for any
  :math:`\Sigma`, docs/theory.md section 7);
* the exponent :math:`c` of :math:`E\|\Delta_k\|^2 \propto k^c` is fitted
  (``numeric.fit_power_law``) to the curve of eq. (13)
  (``numeric.predicted_global_displacement``) on exactly the grid and window on which it is
  fitted to the measured curve (:func:`exponent_comparison`).

Modes with :math:`\rho + \lambda \le 0` have no stationary law (no restoring force along
them; docs/theory.md section 10), and modes with :math:`\rho \le 0` carry no noise under
Assumption 5 (a negative :math:`\rho` would even give a negative variance: curvature that
the quadratic model of the start point does not describe). Both are left out of both
predictions (``numeric.predicted_speed``: modes with :math:`\rho \le 10^{-10}\rho_{\max}`)
and their weight is in the row (``excluded_weight``, of which ``negative_weight`` have
:math:`\rho + \lambda < 0`), so a reader sees how much of the spectrum the prediction
ignores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from numeric._io import atomic_write_text

__all__ = [
    "VARIABLES",
    "SweepMismatchError",
    "SweepExperiment",
    "LinregSweep",
    "ResNet18Sweep",
    "EXPERIMENTS",
    "get_experiment",
    "create_sweep",
    "load_manifest",
    "ensure_shared",
    "run_task",
    "run_tasks",
    "summarize",
    "task_index_from_environment",
    "exponent_comparison",
    "add_arguments",
    "main",
]

MANIFEST = "sweep.json"
SHARED = "shared"
TASKS = "tasks"
DONE = "done"
SUMMARY = "summary.json"
FIGURE = "fig6_sweep.png"
_FORMAT = 1

# command-line name -> configuration key of the experiments
VARIABLES = {"eta": "eta", "batch-size": "batch_size", "beta": "beta", "lam": "lam"}


class SweepMismatchError(ValueError):
    """The sweep folder holds a manifest for a different sweep."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, value) -> None:
    from .report import to_jsonable

    atomic_write_text(path, json.dumps(to_jsonable(value), indent=2, allow_nan=False) + "\n")


def _read_json(path: Path):
    return json.loads(Path(path).read_text())


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------------------
# the measured exponent beside the predicted one
# --------------------------------------------------------------------------------------------


def exponent_comparison(steps, global_sq, predicted, *, window=2 / 3, seed=0) -> dict:
    r"""The exponent ``c`` fitted to a measured ``||Delta_k||^2`` curve and to its prediction on
    the same grid and window.

    ``global_sq`` is ``(R,)`` (one run) or ``(R, seeds)``; the measured ``c`` is
    ``numeric.fit_power_law`` on the seed mean (its AR(1)-prewhitened block-bootstrap interval
    and standard error). With two or more independent seeds the row also carries the
    delete-one-seed jackknife standard error of that ``c``, which rests only on the
    independence of the seeds (the bootstrap rests on a model of the autocorrelation within one
    curve); ``standard_error`` is the larger of the two. ``predicted`` is ``(R,)``: its ``c`` is
    fitted with the same estimator on the same points (a deterministic curve: no interval).
    Steps ``<= 0`` are dropped.
    """
    import numeric

    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(global_sq, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    predicted = np.asarray(predicted, dtype=np.float64)
    keep = steps > 0
    steps, values, predicted = steps[keep], values[keep], predicted[keep]
    fit = numeric.fit_power_law(steps, values.mean(1), window=window,
                                rng=np.random.default_rng(seed))
    fit_predicted = numeric.fit_power_law(steps, predicted, window=window,
                                          rng=np.random.default_rng(seed), num_bootstrap=10)
    seeds = values.shape[1]
    jackknife = None
    if seeds >= 2:
        mask = numeric._estimators._window_mask(steps, window)
        x = np.log(steps[mask])
        total = values[mask].sum(1)
        slopes = []
        for s in range(seeds):
            y = np.log((total - values[mask, s]) / (seeds - 1))
            slopes.append(numeric._estimators._ols_slope(x, y)[0])
        slopes = np.asarray(slopes)
        jackknife = float(math.sqrt((seeds - 1) / seeds * np.sum((slopes - slopes.mean()) ** 2)))
    error = max(fit.standard_error, jackknife or 0.0)
    return {"fitted": fit.exponent, "ci": [fit.ci_low, fit.ci_high],
            "bootstrap_standard_error": fit.standard_error, "jackknife_standard_error": jackknife,
            "standard_error": error, "predicted": fit_predicted.exponent, "window": window,
            "num_seeds": seeds, "steps_fitted": [float(steps[0]), float(steps[-1])],
            "z_score": (fit.exponent - fit_predicted.exponent) / error if error > 0 else None}


# --------------------------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------------------------


class SweepExperiment:
    """What a sweep needs from an experiment; subclass and register in :data:`EXPERIMENTS`.

    ``add_options(parser)`` adds the experiment's options; ``base_config(args)`` turns the
    parsed options into the default configuration (a JSON-able dict holding every key of
    :data:`VARIABLES`' values that the experiment accepts); ``prepare_shared(config,
    shared_dir, progress)`` writes what every task reuses into ``shared_dir`` (computed at
    the default configuration); ``run_task(config, run_dir, shared_dir, *, resume,
    progress)`` runs one configuration in ``run_dir`` and returns its summary row (a
    JSON-able dict with at least ``speed`` and ``exponent``, see :meth:`LinregSweep.run_task`).
    """

    name = "?"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def base_config(self, args: argparse.Namespace) -> dict:
        raise NotImplementedError

    def prepare_shared(self, config: dict, shared_dir: Path, *, progress: bool) -> None:
        raise NotImplementedError

    def run_task(self, config: dict, run_dir: Path, shared_dir: Path, *, resume: bool,
                 progress: bool) -> dict:
        raise NotImplementedError


class LinregSweep(SweepExperiment):
    r"""Sweep task on linear regression (``experiments.linreg.run_sgd``, batched seeds).

    Shared (``shared/spectrum.npz``, ``shared/linreg.npz`` and ``shared/linreg.json``): the
    exact :class:`numeric.Spectrum` of ``I_c (x) H``, the minimum ``mu`` of the default configuration (the start point of every
    task; linear regression needs no pretraining), ``tr Sigma(mu)`` and
    ``sigma^2 = tr Sigma / tr H``, and the default learning rate (``eta_fraction`` of the
    stability edge ``2 (1 + beta) / rho_max``, docs/theory.md section 6) when ``eta`` is not
    given. Each task starts at ``mu``, runs a burn-in (the larger of 5 relaxation times of the
    top mode and the exact time for ``E||delta||^2`` to reach its stationary value to 1e-3,
    :func:`experiments.experiment.speed_burn_in`), then a stationary window of ``steps`` steps
    in which ``||delta_k||^2`` and ``||Delta_k||^2`` (from the window's start) are recorded.
    With ``lam`` varied the start point stays the default one: the burn-in relaxes the fast
    modes, and slow modes with ``rho + lam`` small carry the transient (stated in the row).
    """

    name = "linreg"

    def add_options(self, parser):
        from .data import DATASETS

        parser.add_argument("--dataset", choices=DATASETS, default="digits")
        parser.add_argument("--data-dir", default=None)
        parser.add_argument("--num-samples", type=int, default=None)
        parser.add_argument("--eta", type=float, default=None,
                            help="default learning rate (default: --eta-fraction of the "
                                 "stability edge)")
        parser.add_argument("--eta-fraction", type=float, default=0.1)
        parser.add_argument("--beta", type=float, default=0.9)
        parser.add_argument("--lam", type=float, default=0.0)
        parser.add_argument("--batch-size", type=int, default=128)
        parser.add_argument("--steps", type=int, default=2000,
                            help="stationary window per task, in steps")
        parser.add_argument("--seeds", type=int, default=8)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--noise", choices=("minibatch", "gaussian"), default="minibatch")

    def base_config(self, args):
        config = {"dataset": args.dataset, "data_dir": args.data_dir,
                  "num_samples": args.num_samples, "eta": args.eta,
                  "eta_fraction": args.eta_fraction, "beta": args.beta, "lam": args.lam,
                  "batch_size": args.batch_size, "steps": args.steps, "seeds": args.seeds,
                  "seed": args.seed, "noise": args.noise}
        self._validate(config)
        return config

    @staticmethod
    def _validate(config):
        if config["eta"] is not None and not config["eta"] > 0:
            raise ValueError(f"eta must be > 0, but got {config['eta']}")
        if not 0 < config["eta_fraction"] < 1:
            raise ValueError(f"eta_fraction must be in (0, 1), but got {config['eta_fraction']}")
        if not 0 <= config["beta"] < 1:
            raise ValueError(f"beta must be in [0, 1), but got {config['beta']}")
        if not config["lam"] >= 0:
            raise ValueError(f"lam must be >= 0, but got {config['lam']}")
        for key, minimum in (("batch_size", 1), ("steps", 10), ("seeds", 2)):
            value = config[key]
            if not (isinstance(value, int) and value >= minimum):
                raise ValueError(f"{key} must be an integer >= {minimum}, but got {value!r}")

    @staticmethod
    def _data(config):
        from .data import load_dataset

        return load_dataset(config["dataset"], data_dir=config["data_dir"], seed=config["seed"],
                            num_samples=config["num_samples"])

    def prepare_shared(self, config, shared_dir, *, progress):
        from . import compare
        from .experiment import stability_edge
        from .linreg import least_squares

        import numeric

        data = self._data(config)
        problem = least_squares(data.X, data.Y, lam=config["lam"])
        spectrum = numeric.spectrum_from_least_squares(data.X, num_outputs=data.Y.shape[1])
        spectrum.save(shared_dir / "spectrum.npz")
        trace_sigma = compare.noise_trace(data.X, data.Y, problem.mu)
        sigma2 = trace_sigma / spectrum.trace
        edge = stability_edge(float(spectrum.nodes().max() + config["lam"]), config["beta"])
        eta = config["eta"] if config["eta"] is not None else config["eta_fraction"] * edge
        np.savez(shared_dir / "linreg.npz", spectrum=problem.spectrum, mu=problem.mu)
        _write_json(shared_dir / "linreg.json", {
            "noise_trace": trace_sigma, "trace_hessian": spectrum.trace,
            "sigma2": sigma2, "default_eta": eta, "stability_edge_eta": edge,
            "num_samples": int(data.X.shape[0]), "num_parameters": spectrum.num_parameters,
            "start_point": "minimum mu of the default configuration (exact)",
            "spectrum": "exact eigenvalues of I_c (x) X^T X / N"})

    def run_task(self, config, run_dir, shared_dir, *, resume, progress):
        import numeric

        from . import compare
        from .experiment import speed_burn_in
        from .linreg import effective_batch_size, least_squares, run_sgd

        self._validate(config)
        shared = _read_json(shared_dir / "linreg.json")
        with np.load(shared_dir / "linreg.npz", allow_pickle=False) as arrays:
            spectrum, mu = arrays["spectrum"], arrays["mu"]
        full_spectrum = numeric.Spectrum.load(shared_dir / "spectrum.npz")
        data = self._data(config)
        problem = least_squares(data.X, data.Y, lam=config["lam"])
        eta = config["eta"] if config["eta"] is not None else shared["default_eta"]
        beta, lam, S = config["beta"], config["lam"], config["batch_size"]
        sigma2 = shared["sigma2"]
        S_eff = effective_batch_size(S, data.X.shape[0], config["noise"])
        top = float(spectrum.max())
        burn_in = max(int(math.ceil(5 * float(compare.relaxation_steps(top, eta=eta, beta=beta,
                                                                         lam=lam)))),
                      speed_burn_in(spectrum, eta=eta, beta=beta, lam=lam))
        traj = run_sgd(problem, eta=eta, beta=beta, batch_size=S,
                       num_steps=burn_in + config["steps"], num_seeds=config["seeds"],
                       seed=config["seed"] + 1, theta0=mu, displacement_from=burn_in,
                       noise=config["noise"],
                       sigma2=sigma2 if config["noise"] == "gaussian" else None,
                       progress=progress)
        window = traj.steps >= burn_in
        lags = traj.steps[window] - burn_in
        local, global_sq = traj.local_sq[window], traj.global_sq[window]
        np.savez_compressed(run_dir / "trajectory.npz", steps=lags, local_sq=local,
                            global_sq=global_sq, burn_in=burn_in)
        if not (np.all(np.isfinite(local)) and np.all(np.isfinite(global_sq))):
            raise FloatingPointError(f"SGD diverged at eta={eta:g}, beta={beta}, S={S}")
        return _task_row(local, lags, global_sq, full_spectrum,
                         eta=eta, beta=beta, lam=lam, S=S_eff, sigma2=sigma2,
                         noise_model=("gaussian N(0, sigma2 H / S)" if config["noise"] ==
                                      "gaussian" else "isotropic (Assumption 5)") +
                         ": sigma2 = tr Sigma / tr H at the start point",
                         extra={"burn_in": burn_in, "batch_size": S,
                                "effective_batch_size": S_eff})


def _task_row(local_sq, lags, global_sq, spectrum, *, eta, beta, lam, S, sigma2, noise_model,
              extra=None) -> dict:
    """One run's measured and predicted speed and exponent (see the module docstring)."""
    import numeric

    local_sq = np.asarray(local_sq, dtype=np.float64)
    local_sq = local_sq[:, None] if local_sq.ndim == 1 else local_sq
    per_seed = local_sq.mean(0)
    seeds = per_seed.size
    measured = float(per_seed.mean())
    # across independent seeds; one run gives no error bar (None)
    error = float(per_seed.std(ddof=1) / math.sqrt(seeds)) if seeds >= 2 else None
    kwargs = dict(eta=eta, beta=beta, lam=lam, S=S, noise=numeric.IsotropicNoise(sigma2))
    discrete = numeric.predicted_speed(spectrum, model="discrete", **kwargs)
    speed = {"measured": measured, "standard_error": error, "predicted": float(discrete),
             "predicted_sde": float(numeric.predicted_speed(spectrum, model="sde", **kwargs))}
    speed["z_score"] = (measured - speed["predicted"]) / error if error else None
    lags = np.asarray(lags, dtype=np.float64)
    keep = lags > 0
    curve = numeric.predicted_global_displacement(spectrum, lags[keep], model="discrete",
                                                  **kwargs)
    exponent = exponent_comparison(lags[keep], np.asarray(global_sq)[keep], curve.value)
    return {"eta": eta, "beta": beta, "lam": lam, "S_effective": S, "sigma2": sigma2,
            "noise_model": noise_model, "excluded_weight": discrete.excluded_weight,
            "negative_weight": discrete.negative_weight, "speed": speed, "exponent": exponent,
            **(extra or {})}


class ResNet18Sweep(SweepExperiment):
    r"""Sweep task on the ResNet-18 runner (:func:`experiments.resnet18.run_resnet18`).

    Options are the runner's own (``python -m experiments resnet18 --help``). Shared, computed
    once at the default configuration by the runner's phase functions: the pretrained point
    ``pretrained.pt``, the top-k eigenpairs and trace ``spectrum.pt``, the SLQ bulk
    ``spectrum_bulk.npz`` and the minibatch noise ``noise.npz``. Every task runs the runner
    with ``pretrained=<shared folder>``, which loads them (the noise is measured again when
    the task's batch size differs from the default: the noise trace depends on S), and
    ``resume=True`` after a kill (the runner's checkpoints). The row takes the runner's own
    uncalibrated rows: the speed of eq. 12 with the measured noise trace and the exact discrete
    factor, and the exponent of ``||Delta_k||^2`` from the pretrained point fitted on the last
    ``window`` against ``numeric.predicted_exponent`` on the same steps (Spectrum: top-k exact,
    bulk by SLQ; isotropic noise scaled to the measured trace over the modes with rho > 0).
    """

    name = "resnet18"
    SPEED_ROW = "speed E||delta||^2"
    EXPONENT_ROW = "exponent c of ||Delta_k||^2 from theta*"

    def add_options(self, parser):
        from .resnet18 import add_arguments

        add_arguments(parser)

    def base_config(self, args):
        from .resnet18 import config_from_args

        config = config_from_args(args)
        config.validate()
        return config.to_dict()

    @staticmethod
    def _config(config: dict, **changes):
        from .resnet18 import ResNetConfig

        values = dict(config) | changes
        values["snapshot_steps"] = tuple(values.get("snapshot_steps", ()))
        config = ResNetConfig(**values)
        config.validate()
        return config

    def prepare_shared(self, config, shared_dir, *, progress):
        from . import resnet18
        from .vision import load_image_dataset

        config = self._config(config)
        data = load_image_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                                  num_samples=config.num_samples)
        torch_seed(config.seed)
        if config.pretrained is None:
            resnet18.pretrain(config, data, shared_dir, progress=progress)
            source = shared_dir / "pretrained.pt"
        else:
            source = Path(config.pretrained) / "pretrained.pt"
            shutil.copy2(source, shared_dir / "pretrained.pt")
        model, _ = resnet18._load_pretrained(config, data, source)
        spectrum = resnet18.measure_spectrum(config, model, data, shared_dir, progress=progress)
        resnet18.measure_bulk(config, model, data, spectrum, shared_dir, progress=progress)
        resnet18.estimate_noise(config, model, data, spectrum["eigenvectors"], shared_dir,
                                progress=progress)
        _write_json(shared_dir / "resnet18.json", {
            "start_point": "pretrained.pt of the default configuration",
            "files": sorted(p.name for p in shared_dir.iterdir())})

    def run_task(self, config, run_dir, shared_dir, *, resume, progress):
        from .resnet18 import run_resnet18

        config = self._config(config, pretrained=str(Path(shared_dir).resolve()))
        summary = run_resnet18(config, run_dir, resume=resume, progress=progress)
        return self.row_from_summary(summary, config.window)

    @classmethod
    def row_from_summary(cls, summary: dict, window: float) -> dict:
        """The sweep row from the runner's ``summary.json`` (its speed and exponent rows)."""
        rows = summary["comparisons"]

        def find(prefix):
            for row in rows:
                if row["name"].startswith(prefix):
                    return row
            raise ValueError(f"the resnet18 summary has no row named {prefix!r}...; rows: "
                             f"{[row['name'] for row in rows]}")

        speed, exponent = find(cls.SPEED_ROW), find(cls.EXPONENT_ROW)
        details = speed["details"]
        error = details.get("measured_stderr", speed["standard_error"])
        settings = summary["settings"]
        fitted = exponent["measured"]
        predicted = exponent["predicted"]
        se = exponent["standard_error"]
        ex_details = exponent["details"]
        return {
            "eta": settings["eta"], "beta": settings["beta"], "lam": settings["lam"],
            "S_effective": settings["batch_size"],
            "noise_model": "isotropic (Assumption 5) scaled to the measured minibatch noise "
                           "trace T over the modes with rho > 0",
            "excluded_weight": ex_details.get("excluded_weight"),
            "negative_weight": ex_details.get("negative_weight"),
            "speed": {"measured": speed["measured"], "standard_error": error,
                      "standard_error_with_prediction": speed["standard_error"],
                      "predicted": speed["predicted"],
                      "predicted_sde": details.get("sde_prediction"),
                      "z_score": (speed["measured"] - speed["predicted"]) / error
                      if error else None},
            "exponent": {"fitted": fitted, "ci": [ex_details.get("ci_low"),
                                                  ex_details.get("ci_high")],
                         "bootstrap_standard_error": se, "jackknife_standard_error": None,
                         "standard_error": se, "predicted": predicted, "window": window,
                         "num_seeds": 1,
                         "z_score": (fitted - predicted) / se
                         if se and predicted is not None else None},
            "noise_trace": details.get("noise_trace"),
            "num_parameters": settings.get("num_parameters")}


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


EXPERIMENTS: dict[str, SweepExperiment] = {"linreg": LinregSweep(), "resnet18": ResNet18Sweep()}


def get_experiment(name: str) -> SweepExperiment:
    """The registered experiment ``name`` (:data:`EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, but got {name!r}")
    return EXPERIMENTS[name]


# --------------------------------------------------------------------------------------------
# the sweep folder
# --------------------------------------------------------------------------------------------


def _task_name(index: int, vary: str, value) -> str:
    return f"{index:03d}-{vary}={_format_value(value)}"


def create_sweep(out, experiment: str, base_config: dict, vary: str, values) -> dict:
    """Write the manifest of a new sweep to ``out/sweep.json`` and return it; if the folder
    already holds the same sweep, return the existing manifest (so every task of a job array
    may call this). Raises :class:`SweepMismatchError` when it holds a different sweep, and
    ValueError for an unknown ``vary``, an empty or repeated ``values``, or a setting the
    experiment does not have."""
    if vary not in VARIABLES:
        raise ValueError(f"vary must be one of {sorted(VARIABLES)}, but got {vary!r}")
    values = list(values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"values must be non-empty and distinct, but got {values}")
    key = VARIABLES[vary]
    if key not in base_config:
        raise ValueError(f"experiment {experiment!r} has no setting {key!r} to vary")
    if key == "batch_size":
        if any(float(v) != int(v) or int(v) < 1 for v in values):
            raise ValueError(f"batch-size values must be positive integers, but got {values}")
        values = [int(v) for v in values]
    else:
        values = [float(v) for v in values]
    tasks = []
    for index, value in enumerate(values):
        config = dict(base_config)
        config[key] = value
        tasks.append({"index": index, "name": _task_name(index, vary, value), "value": value,
                      "config": config})
    manifest = {"format": _FORMAT, "experiment": experiment, "vary": vary, "values": values,
                "base_config": base_config, "tasks": tasks}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    manifest = json.loads(json.dumps(manifest))  # as it will read back
    if not path.exists():
        handle, temporary = tempfile.mkstemp(prefix=".sweep.", suffix=".tmp", dir=out)
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(manifest, indent=2) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temporary, path)  # fails if another process created it first
        except FileExistsError:
            pass
        finally:
            os.remove(temporary)
    existing = load_manifest(out)
    for field in ("experiment", "vary", "values", "base_config"):
        if existing[field] != manifest[field]:
            raise SweepMismatchError(
                f"{path} holds a different sweep: its {field} is {existing[field]!r}, but this "
                f"command asks for {manifest[field]!r}; use another --out folder")
    return existing


def load_manifest(out) -> dict:
    """Read ``out/sweep.json``; FileNotFoundError names the folder when there is none."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: create the sweep first with --vary and "
                                "--values")
    manifest = _read_json(path)
    if manifest.get("format") != _FORMAT:
        raise SweepMismatchError(f"{path} has format {manifest.get('format')!r}, expected "
                                 f"{_FORMAT}")
    return manifest


def ensure_shared(out, manifest: dict, *, progress: bool = False) -> Path:
    """Compute ``out/shared/`` once (at the default configuration) and return its path.

    Safe under concurrency: the folder is built under a private name and renamed into place;
    if another process got there first its copy is kept and this one is discarded.
    """
    out = Path(out)
    shared = out / SHARED
    if (shared / DONE).is_file():
        return shared
    experiment = get_experiment(manifest["experiment"])
    staging = Path(tempfile.mkdtemp(prefix=".shared-", dir=out))
    try:
        experiment.prepare_shared(manifest["base_config"], staging, progress=progress)
        atomic_write_text(staging / DONE, "")
        try:
            os.rename(staging, shared)
        except OSError:
            if not (shared / DONE).is_file():
                # a stale, unfinished folder from a killed process: replace it
                shutil.rmtree(shared, ignore_errors=True)
                os.rename(staging, shared)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return shared


def _check_index(manifest, index):
    n = len(manifest["tasks"])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"task index must be an integer in [0, {n - 1}], but got {index!r}")


def run_task(out, index: int, *, progress: bool = False) -> str:
    """Run task ``index`` of the sweep in ``out`` unless it is done; return ``"done"`` (it
    was already), ``"ran"`` or ``"resumed"``. Writes the task's ``summary.json``, then its
    ``done`` marker."""
    out = Path(out)
    manifest = load_manifest(out)
    _check_index(manifest, index)
    task = manifest["tasks"][index]
    run_dir = out / TASKS / task["name"]
    if (run_dir / DONE).is_file():
        return "done"
    resume = run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    shared = ensure_shared(out, manifest, progress=progress)
    experiment = get_experiment(manifest["experiment"])
    row = experiment.run_task(dict(task["config"]), run_dir, shared, resume=resume,
                              progress=progress)
    row = {"task": task["name"], "index": index, "vary": manifest["vary"],
           "value": task["value"], "config": task["config"], **row}
    _write_json(run_dir / SUMMARY, row)
    atomic_write_text(run_dir / DONE, "")
    return "resumed" if resume else "ran"


def _threads_per_task(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def run_tasks(out, *, jobs: int = 1, progress: bool = False, log=print) -> dict:
    """Run every task of the sweep in ``out`` that is not done, ``jobs`` at a time.

    ``jobs = 1`` runs them one after the other in this process; ``jobs > 1`` starts one
    ``python -m experiments.sweep --out OUT --task-index I`` subprocess per task, at most
    ``jobs`` at once, each with ``cpu_count // jobs`` threads, its output in the task folder's
    ``log.txt``. Returns ``{task name: status}`` with status ``"done"``, ``"ran"``,
    ``"resumed"`` or ``"failed (exit code N)"``.
    """
    out = Path(out)
    manifest = load_manifest(out)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, but got {jobs!r}")
    ensure_shared(out, manifest, progress=progress)
    statuses = {}
    pending = []
    for task in manifest["tasks"]:
        if (out / TASKS / task["name"] / DONE).is_file():
            statuses[task["name"]] = "done"
        else:
            pending.append(task)
    if jobs == 1:
        for task in pending:
            statuses[task["name"]] = run_task(out, task["index"], progress=progress)
            log(f"[sweep] {task['name']}: {statuses[task['name']]}")
        return statuses

    threads = str(_threads_per_task(jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               OPENBLAS_NUM_THREADS=threads)
    env.pop("SLURM_ARRAY_TASK_ID", None)

    def launch(task):
        run_dir = out / TASKS / task["name"]
        resume = run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "log.txt", "a") as log_file:
            # this module's own entry point: it imports only what the task's experiment needs
            code = subprocess.call(
                [sys.executable, "-m", "experiments.sweep", "--out", str(out),
                 "--task-index", str(task["index"]), "--no-progress"],
                stdout=log_file, stderr=subprocess.STDOUT, env=env)
        if code != 0:
            return f"failed (exit code {code}, see {run_dir / 'log.txt'})"
        return "resumed" if resume else "ran"

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(launch, task): task["name"] for task in pending}
        for future in concurrent.futures.as_completed(futures):
            statuses[futures[future]] = future.result()
            log(f"[sweep] {futures[future]}: {statuses[futures[future]]}")
    return statuses


def task_index_from_environment() -> int | None:
    """``SLURM_ARRAY_TASK_ID`` as an int, or None when unset. ValueError if malformed."""
    text = os.environ.get("SLURM_ARRAY_TASK_ID")
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError as err:
        raise ValueError(f"SLURM_ARRAY_TASK_ID must be an integer, but got {text!r}") from err


def _comparisons(row) -> list[dict]:
    """The run's two rows in the schema of the linear-regression ``summary.json``."""
    from .compare import Comparison

    speed, exponent = row["speed"], row["exponent"]
    label = f"{row['vary']}={_format_value(row['value'])}"
    rows = [
        Comparison(f"stationary E||delta||^2, {label} (uncalibrated, discrete)",
                   speed["predicted"], speed["measured"], speed["standard_error"] or 0.0,
                   {"sde": speed["predicted_sde"], "noise_model": row["noise_model"]}),
        Comparison(f"exponent c of E||Delta_k||^2, {label} (last {exponent['window']:.2g})",
                   exponent["predicted"], exponent["fitted"], exponent["standard_error"],
                   {"ci_measured": exponent["ci"],
                    "jackknife_standard_error": exponent["jackknife_standard_error"]}),
    ]
    return [r.to_dict() for r in rows]


def summarize(out) -> dict:
    """Collect the finished tasks of the sweep in ``out`` into ``out/summary.json`` (one row per
    finished run under ``runs``, the same rows in the comparison schema under
    ``comparisons``, the unfinished tasks under ``missing``) and draw ``fig6_sweep.png``.
    Returns the summary. Raises ValueError when no task has finished."""
    from .experiment import _versions

    out = Path(out)
    manifest = load_manifest(out)
    runs, missing = [], []
    for task in manifest["tasks"]:
        run_dir = out / TASKS / task["name"]
        if (run_dir / DONE).is_file():
            runs.append(_read_json(run_dir / SUMMARY))
        else:
            missing.append(task["name"])
    if not runs:
        raise ValueError(f"no task of the sweep in {out} has finished yet (missing: {missing})")
    shared = {}
    for path in sorted((out / SHARED).glob("*.json")):
        shared[path.stem] = _read_json(path)
    summary = {"experiment": f"sweep-{manifest['experiment']}", "vary": manifest["vary"],
               "values": manifest["values"], "settings": manifest["base_config"],
               "shared": shared, "runs": runs,
               "comparisons": [c for run in runs for c in _comparisons(run)],
               "missing": missing, "versions": _versions(), "figures": [FIGURE]}
    plot_sweep(summary, out / FIGURE)
    _write_json(out / SUMMARY, summary)
    return summary


def plot_sweep(summary: dict, path) -> str:
    """Fig. 6: measured stationary ``E||delta||^2`` per run against the uncalibrated prediction
    (left), fitted ``c`` with its interval against the predicted ``c`` (right)."""
    from . import figures  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    runs = sorted(summary["runs"], key=lambda r: r["value"])
    x = np.array([r["value"] for r in runs], dtype=float)
    speed = np.array([r["speed"]["measured"] for r in runs])
    speed_err = np.array([r["speed"]["standard_error"] or 0.0 for r in runs])
    predicted = np.array([r["speed"]["predicted"] for r in runs])
    sde = np.array([r["speed"]["predicted_sde"] for r in runs])
    c = np.array([r["exponent"]["fitted"] for r in runs])
    ci = np.array([r["exponent"]["ci"] for r in runs]).T
    c_pred = np.array([r["exponent"]["predicted"] for r in runs])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.errorbar(x, speed, yerr=1.96 * speed_err, fmt="o", label="measured (95%)")
    left.plot(x, predicted, "-", label="eq. 12, discrete, uncalibrated")
    left.plot(x, sde, "--", label="eq. 12, SDE")
    left.set_ylabel(r"stationary $E\|\delta\|^2$")
    right.errorbar(x, c, yerr=np.abs(ci - c), fmt="o", label="fitted c (95% interval)")
    right.plot(x, c_pred, "s-", label="predicted c (same window)")
    right.set_ylabel("exponent c")
    vary = summary["vary"]
    for ax in (left, right):
        ax.set_xlabel(vary)
        if vary in ("eta", "batch-size") and np.all(x > 0):
            ax.set_xscale("log")
        ax.legend()
    if np.all(speed > 0) and np.all(predicted > 0):
        left.set_yscale("log")
    fig.suptitle(f"{summary['experiment']}: {vary} sweep, predictions without calibration")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path).name


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's own options (the experiment's options are parsed by the experiment)."""
    parser.add_argument("--out", required=True, help="the sweep folder")
    parser.add_argument("--experiment", default="linreg", choices=sorted(EXPERIMENTS),
                        help="the experiment each task runs (when creating the sweep)")
    parser.add_argument("--vary", choices=sorted(VARIABLES), default=None,
                        help="the setting varied (creates the sweep, or checks that the "
                             "folder holds this sweep)")
    parser.add_argument("--values", type=float, nargs="+", default=None)
    parser.add_argument("--jobs", type=int, default=1, help="tasks run at once on this machine")
    parser.add_argument("--task-index", type=int, default=None,
                        help="run only this task (default: SLURM_ARRAY_TASK_ID when set)")
    parser.add_argument("--summarize", action="store_true",
                        help="only collect the finished tasks into summary.json and the figure")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace, extra: list[str], *, log=print) -> int:
    """``python -m experiments sweep``: create or check the sweep, run its tasks (all, or
    one with ``--task-index``), summarize. Returns the exit status."""
    out = Path(args.out)
    progress = not args.no_progress
    if args.vary is not None:
        if not args.values:
            raise ValueError("--vary needs --values")
        experiment = get_experiment(args.experiment)
        parser = argparse.ArgumentParser(prog=f"sweep {experiment.name} options")
        experiment.add_options(parser)
        config = experiment.base_config(parser.parse_args(extra))
        manifest = create_sweep(out, experiment.name, config, args.vary, args.values)
    else:
        if extra:
            raise ValueError(f"unrecognised arguments {extra}: experiment options are given "
                             "with --vary/--values when the sweep is created")
        manifest = load_manifest(out)
    if args.summarize:
        summary = summarize(out)
        log(_format_summary(summary))
        return 0
    index = args.task_index if args.task_index is not None else task_index_from_environment()
    if index is not None:
        _check_index(manifest, index)
        status = run_task(out, index, progress=progress)
        log(f"[sweep] task {index} ({manifest['tasks'][index]['name']}): {status}")
        return 0
    statuses = run_tasks(out, jobs=args.jobs, progress=progress, log=log)
    failed = [name for name, status in statuses.items() if status.startswith("failed")]
    summary = summarize(out)
    log(_format_summary(summary))
    return 1 if failed else 0


def _format_summary(summary) -> str:
    from .report import format_table

    lines = [format_table(summary["comparisons"]), "",
             f"summary.json and {FIGURE} written; "
             f"{len(summary['runs'])} run(s) finished, {len(summary['missing'])} missing"]
    return "\n".join(lines)


def _entry_point(argv=None) -> int:
    """``python -m experiments.sweep``: the same as ``python -m experiments sweep``, without
    the other subcommands' imports (what ``--jobs`` starts for each task)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep",
                                     description="a hyperparameter sweep as independent tasks")
    add_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    try:
        return main(args, extra)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_entry_point())
