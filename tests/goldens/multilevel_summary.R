# lmerTest 3.1-3 / lme4 1.1-31 printout of summary() for a three-level model with slopes at two
# levels, on the data of tests/test_multilevel_r_parity.py::three_levels(5) written to CSV.
# Run: Rscript tests/goldens/multilevel_summary.R three.csv > multilevel_summary_three_levels.txt
suppressPackageStartupMessages(library(lmerTest))
d <- read.csv(commandArgs(TRUE)[1]); d$school <- factor(d$school); d$class <- factor(d$class)
print(summary(lmer(y ~ x + (1 + x | school/class), d)))
