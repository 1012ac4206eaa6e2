"""Models: design, (RE)ML engine, per-school OLS, PyMC builders (only ``models.pymc_model`` imports PyMC)."""
