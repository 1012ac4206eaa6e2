"""How many Gauss–Hermite nodes per dimension the integrated GLMM likelihood needs (a script, not
a test): the default of :func:`twolevel.models.bayes.agq.default_agq_nodes` is chosen from this.

    .venv/bin/python benchmarks/agq_nodes.py [--seed 1] [--points 8]

On the lecture design (742 schools, 11,091 students; Bernoulli outcome simulated as in
``benchmarks/glmer_speed.py``) for q = 1 (``y ~ 1 + x + (1 | g)``) and q = 2 (``y ~ 1 + x +
(1 + x | g)``): at ``--points`` hyperparameter values drawn around the Laplace (glmer) estimate
(β ± 2 SE, log SDs ± 0.3, the LKJ off-diagonal ± 0.1), the total integrated log-likelihood with K
nodes against a converged reference (K = 21 for q = 1, 15 for q = 2); the SD over the points of
that difference is what moves the posterior (a constant does not), to be set against the
Monte-Carlo error of a fit (1/√ESS ≈ 0.02 posterior SDs at ESS 2,500). Also the time of one log
density and gradient (one thread) per K, with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--points", type=int, default=8)
    a = ap.parse_args()
    from glmer_speed import lecture_data

    from twolevel.models.bayes import agq
    from twolevel.models.bayes.priors import default_glmm_priors
    from twolevel.models.bayes.sampler import effect_structure
    from twolevel.models.glmm.family import get_family
    from twolevel.models.glmm.glmer import glmer
    from twolevel.models.glmm.response import glmer_design

    d = lecture_data(a.seed)
    rng = np.random.default_rng(a.seed)
    print(f"lecture design, Bernoulli (logit), data seed {a.seed}; load "
          f"{os.getloadavg()[0]:.2f}")
    for formula, ks, ref in (("y ~ 1 + x + (1 | g)", (1, 2, 3, 4, 5, 7, 9), 21),
                             ("y ~ 1 + x + (1 + x | g)", (1, 2, 3, 4, 5, 7), 15)):
        fam = get_family("binomial", "logit")
        design, resp = glmer_design(formula, d, fam, None)
        pri = default_glmm_priors(design, resp.y, resp.w, resp.offset, "binomial", "logit")
        st = effect_structure(design)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = glmer(formula, d, family="binomial")
        beta, se = m.fixef().to_numpy(), m.se().to_numpy()
        T = np.asarray(m.VarCorr().cov, dtype=float)
        L = np.linalg.cholesky(T + 1e-10 * np.eye(len(T)))
        q = design.q
        if st == "lkj":
            rows, cols = np.tril_indices(q)
            cov = L[rows, cols].copy()
            cov[rows == cols] = np.log(cov[rows == cols])
        else:
            cov = np.log(np.sqrt(np.diag(T)))
        xs = []
        for _ in range(a.points):
            c = cov + 0.3 * rng.uniform(-1, 1, cov.size)
            if st == "lkj":
                c[rows != cols] = cov[rows != cols] + rng.uniform(-0.1, 0.1, (rows != cols).sum())
            xs.append(np.concatenate([beta + 2 * se * rng.uniform(-1, 1, beta.size), c]))
        pack = {K: agq.pack_agq(design, resp.y, resp.w, resp.offset, "binomial", "logit", pri,
                                st, nodes=K, threads=1) for K in (*ks, ref)}
        ref_v = np.array([agq.agq_schools(x, pack[ref]).sum() for x in xs])
        print(f"\n{formula} (q = {q}); reference K = {ref}")
        print(f"{'K':>3} {'nodes':>6} {'mean diff':>10} {'SD over points':>15} "
              f"{'ms/gradient':>12}")
        for K in ks:
            v = np.array([agq.agq_schools(x, pack[K]).sum() for x in xs])
            diff = v - ref_v
            t0 = time.perf_counter()
            n = 5
            for _ in range(n):
                agq.agq_logp(xs[0], pack[K])
            ms = (time.perf_counter() - t0) / n * 1e3
            print(f"{K:>3} {K ** q:>6} {diff.mean():>10.2e} {diff.std(ddof=1):>15.2e} "
                  f"{ms:>12.2f}", flush=True)
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
