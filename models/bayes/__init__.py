"""The Bayesian side: priors as plain values (:mod:`.priors`), the PyMC builders
(:mod:`.pymc_model`, the only module of twolevel that imports PyMC), the collapsed likelihood in
NumPy (:mod:`.collapsed`), NUTS and the frozen :class:`~.fit.BayesFit` (:mod:`.fit`), and ArviZ's
convergence diagnostics shared with a helper process (:mod:`.diagnostics`)."""
