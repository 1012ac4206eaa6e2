"""The Bayesian side: priors as plain values (:mod:`.priors`), the PyMC builders
(:mod:`.pymc_model` for normal outcomes, :mod:`.pymc_glmm` for binary and count outcomes: the only
modules of twolevel that import PyMC, the specification), the collapsed model's log-density and
gradient in C built once per installation (:mod:`.ckernels`) or compiled by numba and cached
(:mod:`.kernels`, the fallback and the reference), nutpie's NUTS calling them without the GIL
(:mod:`.sampler`), the collapsed likelihood in NumPy (:mod:`.collapsed`), the pointwise
log-likelihoods of binary and count outcomes (:mod:`.glmm_loglik`) and their fit
(:mod:`.glmm_fit`), NUTS and the frozen :class:`~.fit.BayesFit` (:mod:`.fit`), and ArviZ's
convergence diagnostics (:mod:`.diagnostics`) and PSIS-LOO (:mod:`.loo`) vectorised over
parameters and observations."""
