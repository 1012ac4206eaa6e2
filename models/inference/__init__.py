"""Inference on a fitted model: likelihood-ratio tests (:mod:`.anova`), Kenward–Roger
(:mod:`.kenward_roger`), profile likelihoods (:mod:`.profile`) and confidence intervals
(:mod:`.intervals`), HLM's statistics (:mod:`.hlm`) and level-2 residuals (:mod:`.residuals`)."""
