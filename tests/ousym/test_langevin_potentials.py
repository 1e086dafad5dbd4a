"""Eq. (2)-(3) for a general loss, their linear-regression form, and Psi, j, J_ss (eq. 8-11, 40-47)."""

from __future__ import annotations

import pytest
import sympy as sp

from ousym.decomposition import Q_block, U_block, U_mode
from ousym.discrete import G, M
from ousym.langevin import drift, linear_regression_drift, position_update, velocity_update
from ousym.linreg import A_block, A_mode, D_mode, kappa, mu
from ousym.potentials import (
    conservative_force,
    conservative_force_mode,
    fokker_planck_current_mode,
    modified_loss,
    modified_loss_mode,
    modified_loss_position,
    modified_loss_velocity,
    original_potential,
    probability_current_mode,
    stationary_density_mode,
    z_mode,
)
from ousym.symbols import H, a_mode, b_mode, b_vec, beta, eta, g_batch, g_theta, h, lam, mu_vec, n, rho, theta, v, xi

h11, h12, h22 = sp.symbols("h11 h12 h22", real=True)
EXPLICIT_H = sp.Matrix([[h11, h12], [h12, h22]])
THETA = sp.Matrix(sp.symbols("theta1 theta2", real=True))
V = sp.Matrix(sp.symbols("v1 v2", real=True))
B_VEC = sp.Matrix(sp.symbols("b1 b2", real=True))
MU = sp.Matrix(sp.symbols("mu1 mu2", real=True))


def make_explicit(write_out):
    def explicit(expression, hessian=EXPLICIT_H):
        """Write a block expression out for n = 2 with the given symmetric H (generic by default)."""
        two = {n: 2}
        # The identities of Psi and j hold for any mu: keep it as two free symbols (fast algebra).
        replacements = {
            H.xreplace(two): sp.ImmutableMatrix(hessian),
            theta.xreplace(two): sp.ImmutableMatrix(THETA),
            v.xreplace(two): sp.ImmutableMatrix(V),
            b_vec.xreplace(two): sp.ImmutableMatrix(B_VEC),
            mu_vec.xreplace(two): sp.ImmutableMatrix(MU),
        }
        return write_out(expression.xreplace(two).xreplace(replacements))

    return explicit


@pytest.fixture(scope="module")
def explicit(explicit_matrix):
    return make_explicit(explicit_matrix)


def is_zero(expression) -> bool:
    return sp.cancel(sp.together(expression)) == 0 or sp.simplify(expression) == 0


def test_linear_regression_drift_is_minus_A_times_displacement(explicit):
    # eq. (3) with g(theta) = H theta - b equals eq. (4): -A (z - (mu, 0)).
    A = explicit(A_block)
    z = sp.Matrix.vstack(THETA, V)
    z_star = sp.Matrix.vstack((EXPLICIT_H + lam * sp.eye(2)).inv() * B_VEC, sp.zeros(2, 1))
    difference = explicit(linear_regression_drift) + A * (z - z_star)
    assert all(is_zero(entry) for entry in difference)


def test_langevin_drift_depends_on_the_gradient_as_printed():
    # d(drift_v)/d g = -2/(eta(1+beta)) and d(drift_v)/d v = -2(1-beta)/(eta(1+beta)) (eq. 3).
    one = {n: 1}
    scalar_g, scalar_v, scalar_theta = sp.symbols("g v theta", real=True)
    row = drift.subs(one).subs({g_theta.subs(one): sp.Matrix([scalar_g]), v.subs(one): sp.Matrix([scalar_v]),
                                theta.subs(one): sp.Matrix([scalar_theta])}).as_explicit()
    assert row[0] == scalar_v
    assert is_zero(row[1].diff(scalar_g) + 2 / (eta * (1 + beta)))
    assert is_zero(row[1].diff(scalar_v) + 2 * (1 - beta) / (eta * (1 + beta)))
    assert is_zero(row[1].diff(scalar_theta) + 2 * lam / (eta * (1 + beta)))


def test_sgd_update_of_one_mode_is_the_discrete_recursion():
    # eq. (2) with n = 1, theta = mu + a, g_B = rho theta - b + xi, b = h mu  =>  (a, v)' = M (a, v) + G xi.
    one = {n: 1}
    a, velocity, mean = sp.symbols("a velocity m", real=True)
    gradient = rho * (mean + a) - h * mean + xi
    values = {theta.subs(one): sp.Matrix([mean + a]), v.subs(one): sp.Matrix([velocity]),
              g_batch.subs(one): sp.Matrix([gradient])}
    v_next = velocity_update.subs(one).subs(values).as_explicit()[0]
    a_next = position_update.subs(one).subs(values).as_explicit()[0] - mean
    state = sp.Matrix([a, velocity])
    step = sp.Matrix([a_next, v_next])
    assert all(is_zero(e) for e in step.jacobian(state) - M)
    assert all(is_zero(e) for e in step.diff(xi) - G)
    assert all(is_zero(e) for e in step.subs({a: 0, velocity: 0, xi: 0}))


def test_modified_loss_splits_into_position_and_velocity_terms(explicit):
    # eq. (8) = eq. (45) + eq. (46).
    difference = explicit(modified_loss) - explicit(modified_loss_position) - explicit(modified_loss_velocity)
    assert is_zero(difference[0, 0])


def test_block_force_is_divergence_free_and_orthogonal_to_grad_psi(explicit):
    # eq. (40): div j = 0 and j . grad Psi = 0 because Q is skew.
    j = explicit(conservative_force)
    psi = explicit(modified_loss)[0, 0]
    coordinates = list(THETA) + list(V)
    divergence = sum(j[i].diff(coordinates[i]) for i in range(4))
    assert is_zero(divergence)
    gradient = sp.Matrix([psi.diff(c) for c in coordinates])
    assert is_zero((j.T * gradient)[0, 0])


def test_mode_force_current_and_stationary_density():
    # j = -QU z: divergence-free, orthogonal to grad Psi; J_ss = j p_ss is the Fokker-Planck current,
    # and it is divergence-free (stationarity); p_ss = N(0, kappa^-1 U^-1) has Hessian of -log = kappa U.
    j = conservative_force_mode
    assert is_zero(j[0].diff(a_mode) + j[1].diff(b_mode))
    gradient = sp.Matrix([modified_loss_mode.diff(a_mode), modified_loss_mode.diff(b_mode)])
    assert is_zero((j.T * gradient)[0, 0])
    assert all(is_zero(sp.simplify(e)) for e in fokker_planck_current_mode - probability_current_mode)
    current = probability_current_mode
    assert is_zero(sp.simplify(current[0].diff(a_mode) + current[1].diff(b_mode)))
    log_density = sp.expand_log(sp.log(stationary_density_mode), force=True)
    hessian = sp.hessian(-log_density, (a_mode, b_mode))
    assert all(is_zero(e) for e in hessian - kappa * U_mode)
    # eq. (40): j = -A z + D U z.
    assert all(is_zero(e) for e in j - (-A_mode * z_mode + D_mode * U_mode * z_mode))


def test_original_potential_generates_the_position_drift(explicit):
    # eq. (44): grad Phi / 2 = (H + lambda I)(theta - mu), the gradient of the regularized loss.
    phi = explicit(original_potential)[0, 0]
    gradient = sp.Matrix([phi.diff(c) for c in THETA]) / 2
    expected = (EXPLICIT_H + lam * sp.eye(2)) * (THETA - MU)
    assert all(is_zero(e) for e in gradient - expected)
    # and mu = (H + lambda I)^-1 b of eq. (42) is where that gradient vanishes.
    explicit_mu = explicit(mu)
    assert all(is_zero(e) for e in (EXPLICIT_H + lam * sp.eye(2)) * explicit_mu - B_VEC)
