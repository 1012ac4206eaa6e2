"""Models, by stage (imports run one way, top to bottom of this list):

* :mod:`.rformat` — R's number formatting (no project imports);
* :mod:`.design` — formula → model matrices → per-group cross-products (the statistics);
* :mod:`.lmm` — the linear mixed model engine: profiled criterion, optimizer, ``lmer``, results,
  Satterthwaite (lmerTest's summary);
* :mod:`.inference` — inference on a fit: anova, Kenward–Roger, profile/Wald/bootstrap intervals,
  HLM statistics, level-2 residuals;
* :mod:`.bayes` — priors, the PyMC builders (the only module that imports PyMC), the collapsed
  likelihood and its compiled kernels, NUTS, its diagnostics and PSIS-LOO;
* :mod:`.tables` — tables and summaries built on the above: per-school OLS, shrinkage, the
  lecture's answers.
"""
