# Goldens for the glmer engine (issue 11): run from the project root with
#   Rscript tests/goldens/glmer_goldens.R
# Writes tests/goldens/glmer_lme4.json and the data sets it used (glmer_*.csv).
# R 4.2.2, lme4 1.1-31, mlmRev 1.0-8, jsonlite.
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(jsonlite)})
out_dir <- "tests/goldens"

set.seed(20261130)   # the spec's simulated Bernoulli set with a correlated random slope (§9)
J <- 60; nj <- sample(5:30, J, replace = TRUE); g <- factor(rep(seq_len(J), nj))
x <- rnorm(sum(nj))
b <- matrix(rnorm(2 * J), J) %*% chol(matrix(c(1, 0.15, 0.15, 0.25), 2))
y <- rbinom(length(x), 1, plogis(-0.5 + 0.8 * x + b[g, 1] + b[g, 2] * x))
sim <- data.frame(y, x, g)
stopifnot(nrow(sim) == 1115, sum(y) == 436)

set.seed(11)         # Poisson with an exposure offset, 80 groups
Jp <- 80; np_ <- sample(3:15, Jp, replace = TRUE); gp <- rep(seq_len(Jp), np_)
xp <- rnorm(sum(np_)); expo <- runif(sum(np_), 0.5, 3)
yp <- rpois(sum(np_), expo * exp(0.3 + 0.4 * xp + rnorm(Jp, sd = 0.5)[gp]))
pois <- data.frame(y = yp, x = xp, expo = expo, g = gp)

gt <- transform(grouseticks, cHEIGHT = HEIGHT - mean(HEIGHT))
contra <- Contraception

write.csv(cbpp, file.path(out_dir, "glmer_cbpp.csv"), row.names = FALSE)
write.csv(gt[, c("TICKS", "YEAR", "HEIGHT", "cHEIGHT", "BROOD")],
          file.path(out_dir, "glmer_grouseticks.csv"), row.names = FALSE)
write.csv(contra[, c("use", "age", "urban", "livch", "district")],
          file.path(out_dir, "glmer_contraception.csv"), row.names = FALSE)
write.csv(sim, file.path(out_dir, "glmer_sim_slope.csv"), row.names = FALSE)
write.csv(pois, file.path(out_dir, "glmer_pois_offset.csv"), row.names = FALSE)

extract <- function(m, tight = NULL) {
  re <- ranef(m, condVar = TRUE)[[1]]
  pv <- attr(re, "postVar")
  vc <- as.data.frame(VarCorr(m))
  r <- list(
    m2ll = -2 * as.numeric(logLik(m)), aic = AIC(m), bic = BIC(m), deviance = deviance(m),
    theta = unname(getME(m, "theta")), fixef = as.list(fixef(m)),
    se = unname(sqrt(diag(as.matrix(vcov(m))))),
    se_rx = unname(sqrt(diag(as.matrix(suppressWarnings(vcov(m, use.hessian = FALSE)))))),
    vcov = unname(vc$vcov), vcov_names = paste(vc$var1, vc$var2),
    ranef = lapply(as.list(re), unname), levels = rownames(re),
    condvar = lapply(seq_len(dim(pv)[1]), function(a) lapply(seq_len(dim(pv)[2]),
                     function(b2) unname(pv[a, b2, ]))),
    nm_feval = m@optinfo$feval, nobs = nobs(m),
    summary = paste(capture.output(print(summary(m))), collapse = "\n"))
  if (!is.null(tight)) {
    r$tight <- list(m2ll = -2 * as.numeric(logLik(tight)), theta = unname(getME(tight, "theta")),
                    fixef = unname(fixef(tight)), se = unname(sqrt(diag(as.matrix(vcov(tight))))))
  }
  r
}
fit <- function(f, data, fam, nAGQ = 1, ...) glmer(f, data = data, family = fam, nAGQ = nAGQ, ...)
# glmer refitted to convergence: PIRLS to 1e-12 and a Nelder-Mead simplex 1e-9 wide
tight_of <- function(m, f, data, fam) {
  n <- length(getME(m, "theta")) + length(fixef(m))
  suppressWarnings(glmer(f, data = data, family = fam, control = glmerControl(
    tolPwrss = 1e-12, optCtrl = list(xt = rep(1e-9, n)))))
}
fits <- list()
f_cbpp <- cbind(incidence, size - incidence) ~ period + (1 | herd)
fits$cbpp <- extract(m <- fit(f_cbpp, cbpp, binomial), tight_of(m, f_cbpp, cbpp, binomial))
for (k in c(12, 20, 25)) fits[[paste0("cbpp_agq", k)]] <- extract(fit(f_cbpp, cbpp, binomial, k))
f_gt <- TICKS ~ YEAR + cHEIGHT + (1 | BROOD)
fits$grouseticks <- extract(m <- fit(f_gt, gt, poisson), tight_of(m, f_gt, gt, poisson))
f_co <- use ~ age + I(age^2) + urban + livch + (1 + urban | district)
fits$contraception <- extract(m <- fit(f_co, contra, binomial), tight_of(m, f_co, contra, binomial))
f_sim <- y ~ 1 + x + (1 + x | g)
m_sim <- fit(f_sim, sim, binomial)
fits$sim_slope <- extract(m_sim, tight_of(m_sim, f_sim, sim, binomial))
m_sim0 <- fit(y ~ x + (1 | g), sim, binomial)
fits$sim_int <- extract(m_sim0)
for (k in c(12, 20)) fits[[paste0("sim_int_agq", k)]] <- extract(fit(y ~ x + (1 | g), sim, binomial, k))
fits$sim_probit <- extract(fit(y ~ x + (1 | g), sim, binomial(link = "probit")))
fits$pois_offset <- extract(fit(y ~ x + offset(log(expo)) + (1 | g), pois, poisson))
ci_of <- function(m) { ci <- suppressMessages(confint(m, method = "profile"))
  list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2])) }
fits$cbpp$profile_ci <- ci_of(fit(f_cbpp, cbpp, binomial))
fits$sim_int$profile_ci <- ci_of(m_sim0)
fits$sim_slope$profile_ci <- ci_of(m_sim)   # SDs and the correlation (sdcor scale)
a <- anova(m_sim0, m_sim)
anova_sim <- list(chisq = a$Chisq[2], df = a$Df[2], p = a[["Pr(>Chisq)"]][2])
cat(toJSON(list(versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4"))),
                fits = fits, anova_sim = anova_sim), digits = NA, auto_unbox = TRUE, pretty = TRUE),
    file = file.path(out_dir, "glmer_lme4.json"))
