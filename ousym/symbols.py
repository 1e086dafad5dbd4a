"""Every symbol of the theory, defined once, with its assumptions and paper notation.

Notation follows Kunin et al., "The Limiting Dynamics of SGD" (Neural Computation 2023,
arXiv:2107.09133), as restated in the project's theory document docs/theory.md:

========  ===========  ==========================================================
symbol    paper        meaning
========  ===========  ==========================================================
eta       :math:`\\eta`      learning rate, > 0
beta      :math:`\\beta`     momentum, in [0, 1) (SymPy cannot encode the upper bound;
                             derivations that need 1 - beta > 0 use :data:`one_minus_beta`
                             facts explicitly)
lam       :math:`\\lambda`   weight decay, >= 0
S         :math:`S`          batch size, > 0
sigma2    :math:`\\sigma^2`  noise scale of Assumption 5, Sigma = sigma^2 H, > 0
rho       :math:`\\rho`      one Hessian eigenvalue, >= 0
k         :math:`k`          number of SGD steps, >= 0 (discrete time)
t         :math:`t`          continuous SDE time, t = eta * k, >= 0
tau       :math:`\\tau`      a continuous lag time, tau = eta * k, >= 0
a0, b0    :math:`a_0, b_0`   initial position <theta_0 - mu, q> and velocity <v_0, q> of a mode
n         :math:`n`          number of parameters
H, Sigma  :math:`H, \\Sigma` Hessian and gradient-noise covariance (n x n matrix symbols)
========  ===========  ==========================================================

Time units: SDE time is ``t = eta * k`` for step ``k``; see :data:`t_of_k`.
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "eta", "beta", "lam", "S", "sigma2", "rho", "k", "j", "t", "tau", "a0", "b0", "n",
    "H", "Sigma", "I_n", "h", "t_of_k", "theta", "v",
]

eta = sp.Symbol("eta", positive=True)
beta = sp.Symbol("beta", nonnegative=True)
lam = sp.Symbol("lambda", nonnegative=True)
S = sp.Symbol("S", positive=True)
sigma2 = sp.Symbol("sigma^2", positive=True)
rho = sp.Symbol("rho", nonnegative=True)
k = sp.Symbol("k", nonnegative=True)
j = sp.Symbol("j", integer=True, nonnegative=True)
t = sp.Symbol("t", nonnegative=True)
tau = sp.Symbol("tau", nonnegative=True)
a0 = sp.Symbol("a_0", real=True)
b0 = sp.Symbol("b_0", real=True)

n = sp.Symbol("n", integer=True, positive=True)
H = sp.MatrixSymbol("H", n, n)
Sigma = sp.MatrixSymbol("Sigma", n, n)
I_n = sp.Identity(n)
theta = sp.MatrixSymbol("theta", n, 1)
v = sp.MatrixSymbol("v", n, 1)

#: Curvature of one mode including weight decay, h = rho + lambda.
h = rho + lam

#: Continuous time of step k (the paper's appendix G writes e^{-gamma k}, dropping eta).
t_of_k = eta * k

# --- added by the derivation modules (additive only) ---------------------------------------
__all__ += [
    "b_vec", "mu_vec", "g_theta", "g_batch", "Sigma_theta", "dW", "dt", "xi", "p_ss",
    "a_mode", "b_mode", "gamma_sym", "omega_sym", "alpha_sym", "h_sym", "epsilon", "x_sym", "y_sym",
]

#: b = X^T Y / N of linear regression (the gradient is g(theta) = H theta - b).
b_vec = sp.MatrixSymbol("b", n, 1)
#: The stationary mean of theta as a symbol; it stands for (H + lambda I)^{-1} b (ousym.linreg.mu).
mu_vec = sp.MatrixSymbol("mu", n, 1)
#: The full-batch gradient g(theta) and minibatch gradient g_B(theta) of a general loss,
#: both evaluated at the current theta (n x 1); the noise covariance Sigma(theta) (n x n).
g_theta = sp.MatrixSymbol(r"g(\theta)", n, 1)
g_batch = sp.MatrixSymbol(r"g_{B}(\theta)", n, 1)
Sigma_theta = sp.MatrixSymbol(r"\Sigma(\theta)", n, n)
#: Wiener increment of the 2n-dimensional phase-space SDE, and the time step dt.
dW = sp.MatrixSymbol("dW", 2 * n, 1)
dt = sp.Symbol("dt", positive=True)
#: One mode's minibatch-noise sample, xi ~ N(0, sigma^2 rho / S) (docs/theory.md section 6).
xi = sp.Symbol("xi", real=True)
#: The value of a stationary density p_ss at the current point (eq. 11: J_ss = j p_ss).
p_ss = sp.Symbol("p_{ss}", positive=True)
#: One mode's phase-space coordinates: position a = <theta - mu, q>, velocity b = <v, q>.
a_mode = sp.Symbol("a", real=True)
b_mode = sp.Symbol("b", real=True)

#: Display abbreviations of the oscillator (appendix F.2): gamma, omega, alpha = sqrt|Delta|,
#: and the mode curvature h = rho + lambda. Derived expressions never contain them; they only
#: make printed formulas readable and serve as free parameters in regime-limit proofs.
gamma_sym = sp.Symbol("gamma", positive=True)
omega_sym = sp.Symbol("omega", positive=True)
alpha_sym = sp.Symbol("alpha", positive=True)
h_sym = sp.Symbol("h", positive=True)
#: Small parameter of the continuum limit (1 - beta = eps x, eta h = eps^2 y, k = s / eps).
epsilon = sp.Symbol("epsilon", positive=True)
x_sym = sp.Symbol("x", positive=True)
y_sym = sp.Symbol("y", positive=True)

# --- real minibatch noise (docs/theory.md section 7; ousym.minibatch) -----------------------
__all__ += [
    "h_l", "h_m", "N_samples", "c_S", "m_4", "m_3r", "m_2r", "p_mode", "closure_coupling",
    "closure_source", "moment_radius", "P_moment", "M_moment", "minibatch_noise_moment",
]

#: Curvatures h_l = rho_l + lambda and h_m = rho_m + lambda of two eigenmodes l, m.
h_l = sp.Symbol("h_l", nonnegative=True)
h_m = sp.Symbol("h_m", nonnegative=True)
#: Number of samples N of the data set.
N_samples = sp.Symbol("N", integer=True, positive=True)
#: Batch factor: Cov(vec g_B | theta) = c_S Sigma(theta).
c_S = sp.Symbol("c_S", positive=True)
#: One mode's data moments: m_4 = (1/N) sum x_i^4, m_3r = (1/N) sum rbar_i x_i^3 - rho gbar,
#: m_2r = (1/N) sum rbar_i^2 x_i^2 - gbar^2 (rbar_i = mu x_i - y_i, gbar = (1/N) sum rbar_i x_i,
#: which is -lambda mu at the ridge solution).
m_4 = sp.Symbol("m_4", positive=True)
m_3r = sp.Symbol("m_{3r}", real=True)
m_2r = sp.Symbol("m_{2r}", nonnegative=True)
#: Closure: position variance p_jl of mode (j, l), the coupling (A p_j)_l, the source b_jl.
p_mode = sp.Symbol("p_{jl}", nonnegative=True)
closure_coupling = sp.Symbol(r"(A p_j)_l", nonnegative=True)
closure_source = sp.Symbol("b_{jl}", nonnegative=True)
#: Spectral radius of the stationary moment map.
moment_radius = sp.Symbol(r"\varrho", nonnegative=True)
#: The second moments P_k of z_k = (theta_k - mu, v_k), the one-step matrix M of all modes, and
#: the noise term G G^T (x) c_S E[Sigma(theta_k)] (2n x 2n).
P_moment = sp.MatrixSymbol("P_k", 2 * n, 2 * n)
M_moment = sp.MatrixSymbol("M", 2 * n, 2 * n)
minibatch_noise_moment = sp.MatrixSymbol(r"G G^{\top} \otimes c_S E[\Sigma(\theta_k)]", 2 * n, 2 * n)
