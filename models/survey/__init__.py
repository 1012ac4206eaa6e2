"""Survey data: sampling weights at two levels (pseudo-maximum likelihood with sandwich SEs),
plausible values and multiply imputed data sets pooled by Rubin's rules (``docs/survey.md``)."""
