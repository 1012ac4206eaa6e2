"""Inference on a fitted model: likelihood-ratio tests (:mod:`.anova`), Kenward–Roger
(:mod:`.kenward_roger`), profile likelihoods (:mod:`.profile`) and confidence intervals
(:mod:`.intervals`), HLM's statistics (:mod:`.hlm`) and level-2 residuals (:mod:`.residuals`);
predictions (:mod:`.predict`), simulation and the parametric bootstrap (:mod:`.simulate`), and
effect sizes: ICC, R², PRV, Snijders–Bosker (:mod:`.effect_sizes`)."""
