# Goldens for several grouping factors (issue 22): lme4 1.1-31 / lmerTest 3.1-3 / pbkrtest on
# lme4's Pastes and Penicillin and mlmRev's Chem97. Run: Rscript tests/goldens/multilevel_goldens.R
suppressPackageStartupMessages({library(lmerTest); library(mlmRev); library(jsonlite)})
one <- function(formula, data, kr = TRUE) {
  m <- lmer(as.formula(formula), data = data)
  ml <- lmer(as.formula(formula), data = data, REML = FALSE)
  co <- summary(m)$coefficients
  out <- list(formula = formula, reml = as.numeric(REMLcrit(m)), ml = deviance(ml),
              theta = unname(getME(m, "theta")), sigma = sigma(m), fixef = unname(fixef(m)),
              se = unname(co[, "Std. Error"]), df = unname(co[, "df"]),
              vcov = as.data.frame(VarCorr(m))$vcov, grp = as.data.frame(VarCorr(m))$grp,
              ngroups = as.list(ngrps(m)))
  if (kr) out$kr_df <- unname(summary(m, ddf = "Kenward-Roger")$coefficients[, "df"])
  out
}
res <- list(
  pastes = one("strength ~ 1 + (1 | batch/cask)", Pastes),
  pastes_wrong = one("strength ~ 1 + (1 | batch) + (1 | cask)", Pastes),
  penicillin = one("diameter ~ 1 + (1 | plate) + (1 | sample)", Penicillin),
  chem97 = one("score ~ gcsecnt + gender + (1 | lea/school)", Chem97, kr = FALSE)
)
res$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     lmerTest = as.character(packageVersion("lmerTest")),
                     pbkrtest = as.character(packageVersion("pbkrtest")))
writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE), "multilevel_goldens.json")
