"""Tables and summaries built on fits: per-school OLS (:mod:`.ols`), shrinkage of OLS → BLUP →
posterior mean (:mod:`.shrinkage`) and the lecture's six answers (:mod:`.lecture_answers`)."""
