# Kenward-Roger goldens (lmerTest summary(ddf = "Kenward-Roger"), pbkrtest) for models beyond the
# random-slope ones in lme4_goldens.R: two terms on one factor (||) and level-2 predictors with
# cross-level interactions; plus the printed KR summaries.
# Run from the project root:
#   Rscript tests/goldens/kr_hlm_lme4.R   (writes tests/goldens/kr_hlm_lme4.json and kr_summaries_lme4.txt)
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(pbkrtest); library(jsonlite)})
data(sleepstudy, package = "lme4"); data(Hsb82, package = "mlmRev")
Hsb82$sector <- factor(as.character(Hsb82$sector), levels = c("Catholic", "Public"))
kr <- function(f) {
  m <- lmer(f, Hsb82); s <- summary(m, ddf = "Kenward-Roger")$coefficients
  list(formula = deparse(f), theta = unname(getME(m, "theta")), sigma = sigma(m),
       names = rownames(s), se = unname(s[, "Std. Error"]), df = unname(s[, "df"]))
}
res <- list(
  hsb_uncorrelated = kr(mAch ~ 1 + cses + meanses + (1 + cses || school)),
  hsb_slopes_as_outcomes = kr(mAch ~ meanses * cses + sector * cses + (cses | school))
)
writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/goldens/kr_hlm_lme4.json")
sink("tests/goldens/kr_summaries_lme4.txt")
sep <- function(name) cat(sprintf("===== %s\n", name))
sep("sleepstudy_kr"); print(summary(lmer(Reaction ~ Days + (Days | Subject), sleepstudy), ddf = "Kenward-Roger"))
sep("hsb_kr"); print(summary(lmer(mAch ~ 1 + cses + (1 + cses | school), Hsb82), ddf = "Kenward-Roger"))
sep("end")
sink()
