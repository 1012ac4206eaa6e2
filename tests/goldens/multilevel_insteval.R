# InstEval golden for several grouping factors (issue 22): lme4 1.1-31 on lme4's InstEval,
# y ~ 1 + service + (1 | s) + (1 | d) (crossed), REML and ML; no lmerTest df (too slow).
# Run: Rscript tests/goldens/multilevel_insteval.R  (writes multilevel_insteval.json)
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
f <- y ~ 1 + service + (1 | s) + (1 | d)
m <- lmer(f, InstEval)
ml <- lmer(f, InstEval, REML = FALSE)
out <- list(formula = "y ~ 1 + service + (1 | s) + (1 | d)", reml = as.numeric(REMLcrit(m)),
            ml = deviance(ml), theta = unname(getME(m, "theta")), sigma = sigma(m),
            fixef = unname(fixef(m)), se = unname(sqrt(diag(as.matrix(vcov(m))))),
            vcov = as.data.frame(VarCorr(m))$vcov, grp = as.data.frame(VarCorr(m))$grp,
            lme4 = as.character(packageVersion("lme4")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "multilevel_insteval.json")
