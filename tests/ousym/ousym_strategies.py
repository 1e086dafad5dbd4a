"""Hypothesis settings and parameter strategies shared by the symbolic-layer spot checks."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ousym.symbols import S, beta, eta, lam, rho, sigma2

#: Spot checks evaluate at 50 digits, so a handful of examples per identity is enough.
SPOT = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def mode_parameters(*, eta_max: float = 0.5):
    """Admissible (eta, beta, rho, lam, sigma^2, S) of one mode, as a symbol -> float dict."""
    return st.fixed_dictionaries(
        {
            eta: st.floats(1e-3, eta_max),
            beta: st.floats(0.0, 0.99),
            rho: st.floats(1e-3, 10.0),
            lam: st.floats(0.0, 1.0),
            sigma2: st.floats(0.1, 10.0),
            S: st.floats(1.0, 256.0),
        }
    )


admissible = mode_parameters()
