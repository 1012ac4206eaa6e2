"""Planning a study: closed-form power and minimum detectable effects of PowerUp!'s designs
(:mod:`.analytic`) and simulation-based power from a design or a fitted model
(:mod:`.simulation`)."""
