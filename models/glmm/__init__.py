"""GLMM engine: binomial and Poisson two-level models fitted as lme4::glmer does (Laplace, adaptive
Gauss–Hermite quadrature), per-group compiled PIRLS. Imports design (and rformat) only."""
