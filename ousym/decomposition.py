r"""The Kwon-Ao decomposition of an OU drift, :math:`A = (D + Q)U` (eq. 22, 43).

For an OU process :math:`dz = -A(z - z^*)dt + \sqrt{2\kappa^{-1}D}\,dW` with stable
:math:`A` and symmetric positive semi-definite :math:`D`, there is a unique pair
:math:`Q` (skew-symmetric) and :math:`U` (symmetric) with :math:`A = (D + Q)U`; then
:math:`B = U^{-1}` solves the Lyapunov equation :math:`AB + BA^\top = 2D` (eq. 19) and the
stationary law is :math:`N(z^*, \kappa^{-1}U^{-1})` (eq. 27).

Three routes are provided:

* :data:`Q_mode`, :data:`U_mode` and :data:`Q_block`, :data:`U_block`: the closed form for SGD on
  linear regression under :math:`\Sigma = \sigma^2 H` (eq. 43).
* :func:`kwon_ao_decomposition`: any explicit stable ``A`` and symmetric PSD ``D``, through the
  Lyapunov equation: :math:`B` solves :math:`AB + BA^\top = 2D`, :math:`U = B^{-1}`,
  :math:`Q = AB - D` (skew by construction).
* :func:`symmetric_drift_decomposition`: eq. (24)-(25), valid only for a **symmetric** ``A``
  (:math:`\tilde Q_{ij} = \frac{\lambda_i - \lambda_j}{\lambda_i + \lambda_j}\tilde D_{ij}` in the
  eigenbasis of ``A``). The SGD drift is not symmetric, so this route refuses it.
"""

from __future__ import annotations

import sympy as sp

from .symbols import H, I_n, beta, eta, h, lam, n, rho, sigma2

__all__ = [
    "Q_mode",
    "U_mode",
    "Q_block",
    "U_block",
    "KwonAo",
    "kwon_ao_decomposition",
    "symmetric_drift_decomposition",
    "solve_lyapunov",
]

#: Skew part of one mode, eq. (43) with H -> rho: [[0, -sigma^2 rho], [sigma^2 rho, 0]].
Q_mode = sp.ImmutableMatrix([[0, -sigma2 * rho], [sigma2 * rho, 0]])

#: Symmetric part of one mode, eq. (43): diag(2h / (eta(1+beta) sigma^2 rho), 1/(sigma^2 rho)).
U_mode = sp.ImmutableMatrix(
    [[2 * h / (eta * (1 + beta) * sigma2 * rho), 0], [0, 1 / (sigma2 * rho)]]
)

_Z = sp.ZeroMatrix(n, n)

#: Eq. (43) over the Hessian: Q = [[0, -sigma^2 H], [sigma^2 H, 0]].
Q_block = sp.BlockMatrix([[_Z, -sigma2 * H], [sigma2 * H, _Z]])

#: Eq. (43) over the Hessian: U = diag(2/(eta(1+beta) sigma^2) H^{-1}(H + lambda I), H^{-1}/sigma^2).
U_block = sp.BlockMatrix(
    [
        [2 / (eta * (1 + beta) * sigma2) * H.I * (H + lam * I_n), _Z],
        [_Z, H.I / sigma2],
    ]
)


class KwonAo:
    r"""Result of a decomposition :math:`A = (D + Q)U`.

    Attributes ``A``, ``D``, ``Q``, ``U``, ``B`` (all ``sympy.ImmutableMatrix`` of the same
    square shape), with :math:`B = U^{-1}` the solution of :math:`AB + BA^\top = 2D` (eq. 19).
    """

    __slots__ = ("A", "D", "Q", "U", "B")

    def __init__(self, *, A: sp.Matrix, D: sp.Matrix, Q: sp.Matrix, U: sp.Matrix, B: sp.Matrix):
        self.A, self.D, self.Q, self.U, self.B = (sp.ImmutableMatrix(m) for m in (A, D, Q, U, B))

    def residuals(self) -> dict[str, sp.Matrix]:
        """The identities the decomposition must satisfy, each as a matrix that is zero:
        ``"A = (D+Q)U"``, ``"Q skew"``, ``"U symmetric"``, ``"AB + BA^T = 2D"`` (eq. 19)."""
        return {
            "A = (D+Q)U": self.A - (self.D + self.Q) * self.U,
            "Q skew": self.Q + self.Q.T,
            "U symmetric": self.U - self.U.T,
            "AB + BA^T = 2D": self.A * self.B + self.B * self.A.T - 2 * self.D,
        }

    def __repr__(self) -> str:
        return f"KwonAo(Q={self.Q}, U={self.U})"


def _as_square_matrix(value, name: str) -> sp.ImmutableMatrix:
    try:
        matrix = sp.ImmutableMatrix(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be an explicit square SymPy matrix, but got {type(value).__name__}"
        ) from error
    if matrix.rows != matrix.cols or matrix.rows == 0:
        raise ValueError(f"{name} must be square and non-empty, but got shape {matrix.shape}")
    return matrix


def solve_lyapunov(A, D) -> sp.ImmutableMatrix:
    r"""Solve :math:`AB + BA^\top = 2D` (eq. 19) for a symmetric ``B``, symbolically.

    The equation is linear in the :math:`d(d+1)/2` entries of ``B``; it is solved as a linear
    system. Raises ``ValueError`` when ``A``, ``D`` are not square of the same size or when the
    solution is not unique (``A`` has eigenvalues :math:`\lambda_i + \lambda_j = 0`, e.g. it is
    not stable), ``TypeError`` when they are not explicit matrices.
    """
    A = _as_square_matrix(A, "A")
    D = _as_square_matrix(D, "D")
    if A.shape != D.shape:
        raise ValueError(f"A and D must have the same shape, but got {A.shape} and {D.shape}")
    d = A.rows
    unknowns = {}
    entries = [[None] * d for _ in range(d)]
    for row in range(d):
        for col in range(row, d):
            symbol = sp.Dummy(f"B_{row}{col}")
            unknowns[(row, col)] = symbol
            entries[row][col] = entries[col][row] = symbol
    B = sp.Matrix(entries)
    residual = A * B + B * A.T - 2 * D
    equations = [residual[r, c] for r in range(d) for c in range(r, d)]
    solutions = sp.solve(equations, list(unknowns.values()), dict=True)
    if len(solutions) != 1 or len(solutions[0]) != len(unknowns):
        raise ValueError(
            "the Lyapunov equation AB + BA^T = 2D has no unique solution for this A "
            f"(A must be stable: every eigenvalue with positive real part); got A = {A.tolist()}"
        )
    return sp.ImmutableMatrix(B.subs(solutions[0]).applyfunc(sp.factor))


def kwon_ao_decomposition(A, D) -> KwonAo:
    r"""Decompose an explicit stable drift as :math:`A = (D + Q)U` (eq. 22) for any ``A``.

    Solves :math:`AB + BA^\top = 2D` (eq. 19) for :math:`B`, then :math:`U = B^{-1}` and
    :math:`Q = AB - D`, which is skew because :math:`AB - D = -(BA^\top - D)`. Then
    :math:`(D + Q)U = ABU = A`. ``A`` need not be symmetric (the SGD drift is not).

    ``A``, ``D``: explicit square SymPy matrices of the same size; ``D`` symmetric positive
    semi-definite with :math:`B` invertible. Raises ``TypeError`` for non-matrices,
    ``ValueError`` for mismatched shapes, a non-symmetric ``D``, or a singular ``B``.
    """
    A = _as_square_matrix(A, "A")
    D = _as_square_matrix(D, "D")
    if not (D - D.T).is_zero_matrix and sp.simplify(D - D.T) != sp.zeros(*D.shape):
        raise ValueError(f"D must be symmetric, but got D = {D.tolist()}")
    B = solve_lyapunov(A, D)
    determinant = sp.factor(B.det())
    if determinant == 0:
        raise ValueError(
            "the Lyapunov solution B is singular, so U = B^-1 does not exist "
            f"(D = {D.tolist()} does not drive every direction)"
        )
    U = B.inv().applyfunc(sp.factor)
    Q = (A * B - D).applyfunc(sp.factor)
    return KwonAo(A=A, D=D, Q=Q, U=U, B=B)


def symmetric_drift_decomposition(A, D) -> KwonAo:
    r"""Eq. (24)-(25): the decomposition for a **symmetric** stable drift ``A``.

    With :math:`A = V\Lambda V^\top` (orthonormal eigenvectors) and
    :math:`\tilde D = V^\top D V`, set :math:`\tilde Q_{ij} = \frac{\lambda_i - \lambda_j}
    {\lambda_i + \lambda_j}\tilde D_{ij}`, :math:`Q = V\tilde Q V^\top` and
    :math:`U = (D + Q)^{-1}A`.

    Raises ``ValueError`` when ``A`` is not symmetric (this formula does not apply; use
    :func:`kwon_ao_decomposition`, which handles any stable ``A``), ``TypeError`` for
    non-matrices.
    """
    A = _as_square_matrix(A, "A")
    D = _as_square_matrix(D, "D")
    if A.shape != D.shape:
        raise ValueError(f"A and D must have the same shape, but got {A.shape} and {D.shape}")
    if sp.simplify(A - A.T) != sp.zeros(*A.shape):
        raise ValueError(
            "eq. (24)-(25) hold only for a symmetric drift A, but got a non-symmetric "
            f"A = {A.tolist()}; use kwon_ao_decomposition(A, D), which solves the Lyapunov "
            "equation and accepts any stable A (the SGD drift is not symmetric)"
        )
    eigenvectors = []
    eigenvalues = []
    for value, multiplicity, vectors in A.eigenvects():
        for vector in sp.GramSchmidt(vectors, orthonormal=True):
            eigenvalues.append(value)
            eigenvectors.append(vector)
    if len(eigenvalues) != A.rows:
        raise ValueError(f"A must be diagonalizable, but got A = {A.tolist()}")
    V = sp.Matrix.hstack(*eigenvectors)
    D_tilde = V.T * D * V
    Q_tilde = sp.Matrix(
        A.rows,
        A.cols,
        lambda i, j: (eigenvalues[i] - eigenvalues[j]) / (eigenvalues[i] + eigenvalues[j]) * D_tilde[i, j],
    )
    Q = (V * Q_tilde * V.T).applyfunc(sp.simplify)
    U = ((D + Q).inv() * A).applyfunc(sp.simplify)
    B = U.inv().applyfunc(sp.simplify)
    return KwonAo(A=A, D=D, Q=Q, U=U, B=B)
