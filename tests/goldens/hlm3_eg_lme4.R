# lme4's ML fit of HLM's "EG" data (mlmRev::egsingle, the Chicago growth data of the HLM 6
# manual ch. 4 and Raudenbush & Bryk 2002 ch. 8): the unconditional linear growth model that
# HLM3 fits by full ML. Run from tests/goldens:  Rscript hlm3_eg_lme4.R > hlm3_eg_lme4.json
suppressMessages(library(lme4))
data(egsingle, package = "mlmRev")
m <- lmer(math ~ year + (year | schoolid/childid), egsingle, REML = FALSE)
num <- function(x) formatC(x, digits = 12, format = "g")
cat("{\n")
cat(sprintf('  "versions": {"R": "%s", "lme4": "%s", "mlmRev": "%s"},\n',
            getRversion(), packageVersion("lme4"), packageVersion("mlmRev")))
cat('  "formula": "math ~ year + (year | schoolid/childid)",\n  "REML": false,\n')
cat(sprintf('  "deviance": %s,\n', num(deviance(m))))
cat(sprintf('  "theta": [%s],\n', paste(num(getME(m, "theta")), collapse = ", ")))
cat(sprintf('  "beta": [%s],\n', paste(num(fixef(m)), collapse = ", ")))
cat(sprintf('  "sigma2": %s,\n', num(sigma(m)^2)))
mat <- function(g) {
  M <- VarCorr(m)[[g]]
  sprintf("[[%s, %s], [%s, %s]]", num(M[1, 1]), num(M[1, 2]), num(M[2, 1]), num(M[2, 2]))
}
cat(sprintf('  "tau_class": %s,\n', mat("childid:schoolid")))
cat(sprintf('  "tau_school": %s,\n', mat("schoolid")))
cat(sprintf('  "ngroups": {"childid:schoolid": %d, "schoolid": %d}\n',
            ngrps(m)[["childid:schoolid"]], ngrps(m)[["schoolid"]]))
cat("}\n")
