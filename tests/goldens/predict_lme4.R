# Golden values for predict / intervals / effect sizes (issue 12).
# Run from the project root:  Rscript tests/goldens/predict_lme4.R > tests/goldens/predict_lme4.json
suppressPackageStartupMessages({library(lme4); library(performance)})
js <- function(x) {
  if (is.list(x)) {
    body <- paste(vapply(x, js, ""), collapse = ",")
    if (is.null(names(x))) return(paste0("[", body, "]"))
    return(paste0("{", paste0('"', names(x), '":', vapply(x, js, ""), collapse = ","), "}"))
  }
  v <- ifelse(is.finite(x), sprintf("%.15g", x), "null")
  if (length(v) == 1) v else paste0("[", paste(v, collapse = ","), "]")
}
# PEV of rows `nd` (known groups) from the dense joint covariance of (b - b_hat, beta_hat - beta):
# sigma^2 D A^-1 D' (lme4 1.1-37's vcov_full), W = [Z X] of the rows
pev <- function(m, nd, group) {
  X <- getME(m, "X"); ZL <- as.matrix(getME(m, "Z") %*% getME(m, "Lambda"))
  A <- rbind(cbind(crossprod(ZL) + diag(ncol(ZL)), crossprod(ZL, X)),
             cbind(crossprod(X, ZL), crossprod(X)))
  D <- as.matrix(Matrix::bdiag(getME(m, "Lambda"), diag(ncol(X))))
  C <- sigma(m)^2 * D %*% solve(A) %*% t(D)
  f <- formula(m)
  mf <- cbind(nd, setNames(data.frame(0), all.vars(f)[1]))
  mf[[group]] <- factor(mf[[group]], levels = levels(model.frame(m)[[group]]))
  Xk <- model.matrix(terms(m), mf)
  rt <- mkReTrms(findbars(f), model.frame(subbars(f), mf), drop.unused.levels = FALSE)
  W <- cbind(as.matrix(t(rt$Zt)), Xk)
  unname(rowSums((W %*% C) * W))
}
effects <- function(m) list(icc = unname(unlist(icc(m)[c("ICC_adjusted", "ICC_unadjusted")])),
                            r2 = unname(unlist(r2_nakagawa(m)[c("R2_marginal", "R2_conditional")])))
m1 <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
nd1 <- data.frame(Days = c(5, 0, 1, 2, 3, 4), Subject = "308")
s1 <- list(
  fitted_1_5 = unname(predict(m1)[1:5]),
  population_1_5 = unname(predict(m1, re.form = NA)[1:5]),
  new_days_0_5_9 = unname(predict(m1, data.frame(Days = c(0, 5, 9), Subject = "new"),
                                  allow.new.levels = TRUE)),
  s308_day5 = unname(predict(m1, nd1[1, ])),
  pev_308_day5 = pev(m1, nd1[1, ], "Subject"),
  pev_308_days_0_4 = pev(m1, nd1[-1, ], "Subject"),
  sigma2 = sigma(m1)^2,
  vcov_fixed = as.vector(as.matrix(vcov(m1))),
  T = as.vector(VarCorr(m1)$Subject)
)
s1 <- c(s1, effects(m1))
data(Hsb82, package = "mlmRev")
Hsb82$school <- factor(Hsb82$school, ordered = FALSE)
m2 <- lmer(mAch ~ 1 + cses + (1 + cses | school), Hsb82)
nd2 <- data.frame(cses = c(1, 0), school = "1224")
s2 <- list(
  fit_1224_cses_1_0 = unname(predict(m2, nd2)),
  pev_1224_cses_1_0 = pev(m2, nd2, "school"),
  new_cses_1_0 = unname(predict(m2, data.frame(cses = c(1, 0), school = "new"),
                                allow.new.levels = TRUE)),
  sigma2 = sigma(m2)^2
)
s2 <- c(s2, effects(m2))
cat(js(list(sleepstudy = s1, hsb82 = s2)), "\n")
