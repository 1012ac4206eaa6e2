"""Models, by stage (imports run one way, top to bottom of this list):

* :mod:`.rformat` — R's number formatting (no project imports);
* :mod:`.design` — formula → model matrices → per-group cross-products (the statistics), and the
  statistics sources for data past memory;
* :mod:`.lmm` — the linear mixed model engine: profiled criterion, optimizer, ``lmer``, results,
  Satterthwaite (lmerTest's summary);
* :mod:`.glmm` — the generalized linear mixed model engine (``glmer``: PIRLS, Laplace and AGQ
  kernels, glmer's two-stage optimiser, results);
* :mod:`.bayes` — priors, the PyMC builders (the only modules that import PyMC), the collapsed
  likelihood and its compiled kernels, NUTS, its diagnostics and PSIS-LOO, posterior
  predictions; :mod:`.inference` — inference on a
  fit: anova, Kenward–Roger, profile/Wald/bootstrap intervals, predictions, simulation, effect
  sizes, HLM statistics, level-2 residuals (these two do not import each other at module level);
* :mod:`.tables` — tables and summaries built on the above: per-school OLS, shrinkage, the
  lecture's answers.
"""
