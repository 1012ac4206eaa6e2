"""The linear mixed model engine (lme4's ``lmer`` + lmerTest's summary): the profiled (RE)ML
criterion as a pure function of θ (:mod:`.deviance`, compiled loops in :mod:`.kernels`), the
optimizer (:mod:`.optimize`), ``lmer`` itself (:mod:`.lmer`), the frozen result
(:mod:`.results`) and lmerTest's Satterthwaite degrees of freedom (:mod:`.satterthwaite`)."""
