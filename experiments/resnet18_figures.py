r"""Figures of the ResNet-18 experiment: Figs. 1, 3, 4, 5 and 7 of Kunin et al. 2023.

Each function takes the arrays the phases of :mod:`experiments.resnet18` left behind and writes
one PNG; :func:`draw_all` writes them all and returns their file names. Tests assert on numbers,
never on figures (docs/theory.md section 9 for units: ``k`` in steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import numeric

__all__ = ["FIGURES", "draw_all"]

FIGURES = ("resnet18_fig1_displacement.png", "resnet18_fig7_exponent_window.png",
           "resnet18_fig3_landscape.png", "resnet18_fig4_velocity.png",
           "resnet18_fig5_phase_space.png")


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _running_mean(values, width):
    width = max(1, min(width, len(values)))
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def fig1_displacement(config, trajectory, measurements, path):
    """Fig. 1: the instantaneous speed :math:`\\|\\delta_k\\|^2` (flat) and the global
    displacement :math:`\\|\\Delta_k\\|^2` (a power law), with the fits of the window; right,
    the raw and angular displacement of the scale-invariant weights."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = trajectory["step"]
    speed = trajectory["local_displacement_sq"]
    ax = axes[0]
    ax.plot(steps, speed, lw=0.5, color="0.7", label=r"$\|\delta_k\|^2$")
    width = 10 * int(round(1 / (1 - config.beta)))
    smooth = _running_mean(speed, width)
    ax.plot(steps[width - 1:], smooth, color="k", label=f"running mean ({width} steps)")
    predicted = measurements.get("speed_predicted")
    if predicted is not None:
        ax.axhline(predicted, color="C3", ls="--", label="eq. 12 (measured noise trace)")
    ax.axvline(config.window_start, color="C0", ls=":", lw=1, label="window start")
    ax.set_xlabel("step k")
    ax.set_ylabel(r"$\|\delta_k\|^2$")
    ax.set_title(f"speed, CV over window {measurements['speed_cv']:.2f}")
    ax.legend(fontsize=7)
    ax = axes[1]
    fits = measurements["fits"]
    for (key, label, color, k, values) in (
            ("exponent c of ||Delta_k||^2 from theta* (last window)", r"from $\theta^*$", "C0",
             steps, trajectory["global_displacement_sq"]),
            ("exponent c of ||Delta_k||^2 from the window start", "from window start", "C1",
             trajectory["window_step"], trajectory["window_displacement_sq"])):
        keep = (k > 0) & (values > 0)
        fit = fits[key]
        ax.loglog(k[keep], values[keep], color=color,
                  label=f"{label}: c = {fit['exponent']:.3f} "
                        f"[{fit['ci_low']:.3f}, {fit['ci_high']:.3f}]")
        kk = k[keep]
        lo = kk[-1] - fit["window"] * (kk[-1] - kk[0])
        grid = kk[kk >= lo]
        ax.loglog(grid, fit["prefactor"] * grid ** fit["exponent"], color="k", ls="--", lw=1)
    curve = measurements.get("predicted_displacement_sq")
    if curve is not None:
        curve = np.asarray(curve)
        keep = (steps > 0) & (curve > 0)
        ax.loglog(steps[keep], curve[keep], color="C3", ls=":",
                  label="eq. 13 (top-k + SLQ bulk, measured noise trace)")
    ax.set_xlabel("step k")
    ax.set_ylabel(r"$\|\Delta_k\|^2$")
    ax.set_title("global displacement (dashed: power-law fits)")
    ax.legend(fontsize=7)
    ax = axes[2]
    k = trajectory["extras_step"]
    for key, label, color in (("raw_scale_invariant_sq", "raw", "C2"),
                              ("angular_sq", "angular", "C4")):
        values = trajectory[key]
        keep = (k > 0) & (values > 0)
        name = ("exponent c of the raw displacement (scale-invariant weights)" if key.startswith(
            "raw") else "exponent c of the angular displacement (scale-invariant weights)")
        ax.loglog(k[keep], values[keep], color=color,
                  label=f"{label}: c = {fits[name]['exponent']:.3f}")
    ax.set_xlabel("step k")
    ax.set_ylabel("squared displacement")
    ax.set_title("scale-invariant conv weights")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def fig7_exponent_window(config, trajectory, path):
    """Fig. 7: the fitted exponent against the fitted window (last fraction of the run)."""
    plt = _pyplot()
    steps, values = trajectory["step"], trajectory["global_displacement_sq"]
    keep = (steps > 0) & (values > 0)
    windows = np.linspace(0.1, 1.0, 19)
    exponents = numeric.exponent_vs_window(steps[keep], values[keep], windows)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.plot(windows, exponents, "o-")
    ax.axhline(1.0, color="0.6", ls=":", lw=1, label="Brownian (c = 1)")
    ax.axvline(config.window, color="C3", ls="--", lw=1, label="window used")
    ax.set_xlabel("fitted fraction of the run (from its end)")
    ax.set_ylabel("fitted exponent c")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def fig3_landscape(config, trajectory, plane, path):
    """Fig. 3: training loss and the modified loss (eq. 10) on the (q_1, q_k) plane, with the
    projected trajectory on top."""
    plt = _pyplot()
    k = config.eigenpairs - 1
    a = trajectory["theta_projection"][:, [0, k]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, key, title in ((axes[0], "train_loss", "training loss"),
                           (axes[1], "modified_loss", r"modified loss $\Psi_\theta$ (eq. 10)")):
        X, Y = np.meshgrid(plane["a1"], plane["ak"], indexing="ij")
        image = ax.contourf(X, Y, plane[key], levels=20, cmap="viridis")
        fig.colorbar(image, ax=ax)
        ax.plot(a[:, 0], a[:, 1], color="k", lw=0.6)
        ax.plot([0], [0], "wo", ms=5)
        ax.set_xlabel(r"$\langle\theta - \theta^*, q_1\rangle$")
        ax.set_ylabel(rf"$\langle\theta - \theta^*, q_{{{k + 1}}}\rangle$")
        ax.set_title(title)
    _save(plt, fig, path)


def fig4_velocity(config, trajectory, spectrum, path):
    """Fig. 4: projected velocity (eta v on q_1, q_k) over contours of
    :math:`\\Psi_v \\propto v^\\top H^{-1} v`."""
    plt = _pyplot()
    k = config.eigenpairs - 1
    rho = spectrum["eigenvalues"].numpy()[[0, k]]
    b = trajectory["velocity_projection"][:, [0, k]] * config.eta
    fig, ax = plt.subplots(figsize=(5, 4.3))
    extent = np.abs(b).max(axis=0) * 1.2
    X, Y = np.meshgrid(np.linspace(-extent[0], extent[0], 100),
                       np.linspace(-extent[1], extent[1], 100), indexing="ij")
    psi = X ** 2 / rho[0] + Y ** 2 / max(rho[1], 1e-12)
    ax.contour(X, Y, psi, levels=8, cmap="Greys")
    ax.plot(b[:, 0], b[:, 1], lw=0.4, color="C0")
    ax.set_xlabel(r"$\eta\langle v, q_1\rangle$")
    ax.set_ylabel(rf"$\eta\langle v, q_{{{k + 1}}}\rangle$")
    ax.set_title(r"velocity vs contours of $\Psi_v \propto v^\top H^{-1} v$")
    _save(plt, fig, path)


def fig5_phase_space(config, trajectory, measurements, path):
    """Fig. 5: phase space (position, eta * velocity) on q_1 and q_k with the measured and
    predicted oscillation frequencies."""
    plt = _pyplot()
    k = config.eigenpairs - 1
    steps = trajectory["step"]
    inside = steps > config.window_start
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, l, label in ((axes[0], 0, "q_1"), (axes[1], k, f"q_{k + 1}")):
        a = trajectory["theta_projection"][inside, l]
        b = trajectory["velocity_projection"][inside, l] * config.eta
        points = ax.scatter(a, b, c=steps[inside], s=2, cmap="viridis")
        predicted, measured = measurements["frequencies"][label]
        ax.set_title(f"{label}: frequency {measured:.4f} measured, {predicted:.4f} predicted "
                     "(cycles/step)", fontsize=9)
        ax.set_xlabel("position")
        ax.set_ylabel(r"$\eta\,$velocity")
        fig.colorbar(points, ax=ax, label="step")
    _save(plt, fig, path)


def draw_all(config, trajectory, spectrum, plane, measurements, out_dir):
    """Write the five figures into ``out_dir``; return their file names."""
    out_dir = Path(out_dir)
    fig1_displacement(config, trajectory, measurements, out_dir / FIGURES[0])
    fig7_exponent_window(config, trajectory, out_dir / FIGURES[1])
    fig3_landscape(config, trajectory, plane, out_dir / FIGURES[2])
    fig4_velocity(config, trajectory, spectrum, out_dir / FIGURES[3])
    fig5_phase_space(config, trajectory, measurements, out_dir / FIGURES[4])
    return list(FIGURES)
