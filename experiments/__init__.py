"""experiments: training runs -> trajectories -> comparison with the kernels -> figures.

``python -m experiments linreg ...`` runs the linear-regression comparisons
(:func:`experiments.experiment.run_linreg`); ``python -m experiments demo`` the demo.
Modules: :mod:`.data` (data sets), :mod:`.linreg` (the batched SGD runner),
:mod:`.compare` (the seven comparisons), :mod:`.figures`, :mod:`.report`,
:mod:`.experiment` (orchestration).
"""

__all__: list[str] = []
