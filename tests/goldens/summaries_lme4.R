# Printed summaries from lme4 1.1-31 + lmerTest 3.1-3 (R 4.2.2), compared line by line with
# LmerFit.summary() / AnovaResult.summary() in tests/test_lmer.py and tests/test_anova.py.
# Run from the project root: Rscript tests/goldens/summaries_lme4.R > tests/goldens/summaries_lme4.txt
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
data(sleepstudy, package = "lme4"); data(Hsb82, package = "mlmRev")
lecture <- read.csv("data/ecls_k_like.csv"); lecture$schid <- factor(lecture$schid)
sep <- function(name) cat(sprintf("===== %s\n", name))
sep("sleepstudy_reml"); m1 <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy); print(summary(m1))
sep("sleepstudy_ml"); print(summary(lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)))
sep("sleepstudy_anova"); m0 <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
print(suppressMessages(anova(m0, m1)))
sep("hsb_reml"); print(summary(lmer(mAch ~ 1 + cses + (1 + cses | school), Hsb82)))
sep("hsb_uncorrelated"); print(summary(lmer(mAch ~ 1 + cses + meanses + (1 + cses || school), Hsb82)))
sep("lecture_reml"); l1 <- lmer(g1rscore ~ 1 + famsesc + (1 + famsesc | schid), lecture); print(summary(l1))
sep("lecture_anova"); l0 <- lmer(g1rscore ~ 1 + famsesc + (1 | schid), lecture)
print(suppressMessages(anova(l0, l1)))
sep("sim_contests")
sim <- read.csv("tests/goldens/sim_3re.csv"); sim$g <- factor(sim$g)
m3 <- lmer(y ~ x1*w + x2 + (1+x1+x2|g), sim)
print(anova(m3, type = 3))
print(contestMD(m3, rbind(c(0,1,0,0,0), c(0,0,0,1,0))), digits = 10)  # x1, x2
print(contest1D(m3, c(0,1,0,-1,0)), digits = 10)  # x1 - x2
sep("end")
