"""The Bayesian side: priors as plain values (:mod:`.priors`), the PyMC builders
(:mod:`.pymc_model`, the only module of twolevel that imports PyMC: the specification), the
collapsed model's log-density and gradient compiled by numba and cached (:mod:`.kernels`), nutpie's
NUTS calling them without the GIL (:mod:`.sampler`), the collapsed likelihood's pieces in NumPy
(:mod:`.collapsed`), the frozen :class:`~.fit.BayesFit` (:mod:`.fit`), and ArviZ's convergence
diagnostics (:mod:`.diagnostics`) and PSIS-LOO (:mod:`.loo`) vectorised over parameters and
observations."""
