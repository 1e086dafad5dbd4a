"""PNG figures of the linear-regression comparisons (matplotlib, Agg backend).

Each ``plot_*`` function takes the curves returned by :mod:`experiments.compare` and writes one
PNG; :func:`make_all` writes all of them and returns the file names. Tests assert on numbers;
these functions only draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["FIGURES", "make_all", "plot_mean_trajectory", "plot_speed_sweep",
           "plot_velocity_correlation", "plot_global_displacement", "plot_equipartition",
           "plot_noise_covariance", "plot_ou_2d"]

FIGURES = {
    "mean_trajectory": "fig1_mean_trajectory.png",
    "speed_sweep": "fig2_speed_vs_eta.png",
    "velocity": "fig3_velocity_autocorrelation.png",
    "displacement": "fig4_global_displacement.png",
    "equipartition": "fig5_equipartition.png",
    "noise": "fig6_noise_covariance.png",
    "ou2d": "fig7_ou_2d.png",
}

plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "legend.fontsize": 8,
                     "figure.dpi": 110})


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def plot_mean_trajectory(curves_by_beta: dict, path: Path) -> str:
    """Seed-averaged ``<theta_k - mu, q_l>`` against the discrete and SDE predictions, with
    the 95% band of the seed mean from the transient covariance; one panel per beta."""
    fig, axes = plt.subplots(1, len(curves_by_beta), figsize=(5.2 * len(curves_by_beta), 3.6),
                             squeeze=False)
    for ax, (beta, cur) in zip(axes[0], curves_by_beta.items()):
        steps = cur["steps"]
        for l in range(cur["measured_a"].shape[1]):
            color = f"C{l}"
            pred = cur["predicted_a"][:, l]
            ax.fill_between(steps, pred - cur["band"][:, l], pred + cur["band"][:, l],
                            color=color, alpha=0.2, lw=0)
            ax.plot(steps, pred, color=color, lw=1.2,
                    label=fr"discrete, $\rho$={cur['rho'][l]:.3g}")
            sde = cur.get("predicted_a_sde")
            if sde is not None:
                ax.plot(steps, sde[:, l], color=color, lw=0.8, ls="--")
            ax.plot(steps, cur["measured_a"][:, l], ".", color=color, ms=2)
        ax.set_xlabel("step k")
        ax.set_ylabel(r"$\langle\theta_k-\mu, q_l\rangle$ (seed mean)")
        eta = cur.get("eta")
        eta_text = "" if eta is None else fr", $\eta$={eta:.3g}"
        ax.set_title(fr"mean trajectory, $\beta$={beta:g}{eta_text}" "\n"
                     "(dots: SGD; line: discrete; dashed: SDE)", fontsize=10)
        ax.legend(loc="upper right")
    return _save(fig, path)


def plot_speed_sweep(cur: dict, path: Path) -> str:
    """Stationary ``E||delta||^2`` over eta: SGD with Gaussian noise and with real minibatches
    (±2 s.e.), the SDE (eq. 12) and exact discrete predictions on a fine grid, and the
    stability edge. Right panel: everything divided by the SDE prediction."""
    import numeric

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    grid = np.geomspace(cur["edge"] * 0.02, cur["edge"] * 0.995, 200)
    top = 0.0
    for i, (noise, part) in enumerate(cur["noises"].items()):
        kw = dict(beta=cur["beta"], lam=cur["lam"], S=part["batch_size"],
                  sigma2=cur["sigma2"])

        def speed(e, model):
            return float(numeric.instantaneous_speed(cur["spectrum"], eta=e, model=model,
                                                     **kw))

        disc = np.array([speed(e, "discrete") for e in grid])
        sde = np.array([speed(e, "sde") for e in grid])
        top = max(top, disc.max())
        lw = 1.2 if i == 0 else 0.6
        if i == 0:
            ax.plot(grid, disc, "C0", lw=lw, label="exact discrete theory")
            ax.plot(grid, sde, "C1--", lw=lw, label="SDE, eq. (12)")
            ax2.plot(grid, disc / sde, "C0", lw=lw, label="discrete / SDE")
            ax2.axhline(1.0, color="C1", ls="--", lw=lw, label="SDE")
        color = "k" if noise == "gaussian" else "C3"
        label = ("SGD, Gaussian noise" if noise == "gaussian" else
                 f"SGD, minibatches (S_eff={part['batch_size']:.4g})") + " ±2 s.e."
        if part["eta"].size:
            marker = dict(fmt="o", color=color, ms=5,
                          mfc=None if noise == "gaussian" else "none")
            ax.errorbar(part["eta"], part["measured"], yerr=2 * part["stderr"], label=label,
                        **marker)
            sde_at = np.array([speed(e, "sde") for e in part["eta"]])
            ax2.errorbar(part["eta"], part["measured"] / sde_at,
                         yerr=2 * part["stderr"] / sde_at, **marker)
    theory = cur.get("minibatch_theory")
    if theory is not None:
        # real-minibatch theory (docs/theory.md section 7) up to its divergence edge
        ax.plot(theory["eta"], theory["speed"], "C3", lw=1.2, label="real-minibatch theory")
        sde_curve = np.array([float(numeric.instantaneous_speed(
            cur["spectrum"], eta=e, beta=cur["beta"], lam=cur["lam"],
            S=cur["noises"]["minibatch"]["batch_size"], sigma2=cur["sigma2"], model="sde"))
            for e in theory["eta"]])
        ax2.plot(theory["eta"], theory["speed"] / sde_curve, "C3", lw=1.2)
        runs = theory.get("runs")
        for a in (ax, ax2):
            a.axvline(theory["edge"], color="C3", ls=":", label="minibatch divergence edge")
        if runs is not None:
            for eta_run, diverged in zip(runs["eta"], runs["diverged"]):
                ax.annotate("diverged" if diverged else "finite", (eta_run, top), fontsize=6,
                            rotation=90, va="top", ha="center", color="C3")
    for a in (ax, ax2):
        a.axvline(cur["edge"], color="gray", ls=":", label="stability edge")
        a.set_xscale("log")
        a.set_xlabel(r"learning rate $\eta$")
    ax.set_yscale("log")
    ax.set_ylim(top=30 * top)  # minibatch runs that blow up are clipped, not rescaled to
    ax.set_ylabel(r"stationary $E\|\delta\|^2$")
    ax.set_title(r"instantaneous speed vs $\eta$")
    ax.legend(fontsize=7)
    ax2.set_ylim(0.5, 5)
    ax2.set_ylabel("relative to the SDE prediction")
    ax2.set_title("the SDE departs near the edge; the discrete theory holds")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def plot_velocity_correlation(cur: dict, path: Path) -> str:
    """Velocity autocorrelation C(k) of the top modes, SGD (±2 s.e.) against the theory."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    lags = cur["lags"]
    for l in range(cur["measured"].shape[1]):
        color = f"C{l}"
        ax.errorbar(lags, cur["measured"][:, l], yerr=2 * cur["stderr"][:, l], fmt=".",
                    color=color, ms=3, elinewidth=0.6)
        ax.plot(lags, cur["predicted"][:, l], color=color,
                label=fr"$\rho$={cur['rho'][l]:.3g} discrete")
        ax.plot(lags, cur["predicted_sde"][:, l], color=color, ls="--", lw=0.8)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("lag k (steps)")
    ax.set_ylabel(r"$C(k)$")
    ax.set_title("velocity autocorrelation (dots: SGD; line: discrete; dashed: SDE)")
    ax.legend()
    return _save(fig, path)


def plot_global_displacement(cur: dict, path: Path) -> str:
    """``E||Delta_k||^2`` from a stationary start, log-log, with fitted exponents."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    k = cur["steps"]
    ax.fill_between(k, cur["measured"] - 2 * cur["stderr"], cur["measured"] + 2 * cur["stderr"],
                    color="k", alpha=0.15, lw=0)
    fit_m, fit_p = cur["fit_measured"], cur["fit_predicted"]
    ax.plot(k, cur["measured"], "k", lw=1, label=f"SGD, fitted c = {fit_m[0]:.3f}")
    ax.plot(k, cur["predicted"], "C0", label=f"discrete theory, c = {fit_p[0]:.3f}")
    ax.plot(k, cur["predicted_sde"], "C1--", label="SDE, eq. (13)")
    if "predicted_minibatch" in cur:
        fit_mb = cur["fit_predicted_minibatch"]
        ax.plot(k, cur["predicted_minibatch"], "C3",
                label=f"real-minibatch theory, c = {fit_mb[0]:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lag k (steps)")
    ax.set_ylabel(r"$E\|\Delta_k\|^2$")
    ax.set_title(fr"global displacement, exponent fitted on last {fit_m[5]:.2g} of k")
    ax.legend()
    return _save(fig, path)


def plot_equipartition(cur: dict, path: Path) -> str:
    """Seed-averaged excess loss and kinetic energy over the stationary window."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(cur["steps"], cur["excess_loss"], "C3", lw=0.8,
            label=r"$L_\lambda(\theta)-L_\lambda(\mu)$")
    ax.plot(cur["steps"], cur["kinetic"], "C0", lw=0.8, label=r"$K = m\|v\|^2/2$")
    ax.set_yscale("log")
    ax.set_xlabel("step k")
    ax.set_ylabel("energy (seed mean)")
    ax.set_title("equipartition (G.3), all modes")
    ax.legend()
    return _save(fig, path)


def plot_noise_covariance(cur: dict, path: Path) -> str:
    """Projected noise ``q^T Sigma q`` against ``sigma^2 rho`` (left) and the top modes'
    velocity variances against both predictions (right)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax1.loglog(cur["rho"], cur["projected_sigma_diag"], "ko", ms=3,
               label=r"measured $q^\top\Sigma(\mu) q$")
    ax1.loglog(cur["rho"], cur["assumed"], "C0-", label=r"$\sigma^2\rho$ (Assumption 5)")
    ax1.set_xlabel(r"Hessian eigenvalue $\rho$")
    ax1.set_ylabel("gradient-noise variance")
    ax1.legend()
    idx = np.arange(cur["rho"].size)
    ax2.semilogy(idx, cur["var_b_measured"], "ko", ms=3, label="SGD")
    ax2.semilogy(idx, cur["var_b_sigma2H"], "C0-", label=r"SDE, $\Sigma=\sigma^2H$")
    ax2.semilogy(idx, cur["var_b_measured_sigma"], "C2--", label=r"SDE, measured $\Sigma$")
    if "var_b_measured_sigma_discrete" in cur:
        ax2.semilogy(idx, cur["var_b_measured_sigma_discrete"], "C3:",
                     label=r"discrete, measured $\Sigma$")
    ax2.set_xlabel("direction index (descending eigenvalue)")
    ax2.set_ylabel(r"stationary Var$\langle v, q\rangle$")
    ax2.legend()
    return _save(fig, path)


def plot_ou_2d(cur: dict, path: Path) -> str:
    """The paper's Fig. 3: contours of Phi and of the modified Psi, a sample path, and the
    stationary probability current ``J = -Q U z p_ss``."""
    import numeric

    H, U, Q, B = cur["H"], cur["U"], cur["Q"], cur["B"]
    path_z = cur["path"]
    lim = 3.0 * np.sqrt(np.max(np.diag(B)))
    grid = np.linspace(-lim, lim, 121)
    zx, zy = np.meshgrid(grid, grid)
    z = np.stack([zx, zy], -1)
    phi = 0.5 * np.einsum("...i,ij,...j->...", z, H, z)
    psi = numeric.ou_modified_loss(z, U)  # eq. 39: z^T U z / 2, p_ss = e^{-Psi} at kappa = 1
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, field, title in ((axes[0], phi, r"original $\Phi = z^\top H z/2$"),
                             (axes[1], psi, r"modified $\Psi = z^\top U z/2$")):
        ax.contour(zx, zy, field, levels=8, cmap="viridis", linewidths=0.8)
        ax.plot(path_z[:, 0], path_z[:, 1], color="gray", lw=0.3, alpha=0.7)
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
    coarse = np.linspace(-lim, lim, 41)
    cx, cy = np.meshgrid(coarse, coarse)
    cz = np.stack([cx, cy], -1)
    density = np.exp(-numeric.ou_modified_loss(cz, U))  # kappa = 1
    current = -np.einsum("ij,jk,...k->...i", Q, U, cz) * density[..., None]
    speed = np.linalg.norm(current, axis=-1)
    axes[1].streamplot(cx, cy, current[..., 0], current[..., 1], color="C3", density=0.7,
                       linewidth=0.4 + 2.0 * speed / speed.max(), arrowsize=0.8)
    axes[1].set_xlim(-lim, lim)
    axes[1].set_ylim(-lim, lim)
    axes[1].set_title(r"modified $\Psi$, sample path, current $J=-QUz\,p_{ss}$")
    return _save(fig, path)


def make_all(curves: dict, out_dir, settings: dict | None = None) -> list[str]:
    """Write every figure whose curves are present; returns the file names written."""
    out_dir = Path(out_dir)
    written = []
    if curves.get("mean"):
        written.append(plot_mean_trajectory(curves["mean"], out_dir / FIGURES["mean_trajectory"]))
    if "sweep" in curves:
        written.append(plot_speed_sweep(curves["sweep"], out_dir / FIGURES["speed_sweep"]))
    if "velocity" in curves:
        written.append(plot_velocity_correlation(curves["velocity"],
                                                 out_dir / FIGURES["velocity"]))
    if "displacement" in curves:
        written.append(plot_global_displacement(curves["displacement"],
                                                out_dir / FIGURES["displacement"]))
    if curves.get("equipartition") and len(curves["equipartition"]["steps"]):
        written.append(plot_equipartition(curves["equipartition"],
                                          out_dir / FIGURES["equipartition"]))
    if "noise" in curves:
        written.append(plot_noise_covariance(curves["noise"], out_dir / FIGURES["noise"]))
    if "ou2d" in curves:
        written.append(plot_ou_2d(curves["ou2d"], out_dir / FIGURES["ou2d"]))
    return written
