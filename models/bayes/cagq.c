/* The two-level GLMM with each school's effects integrated out by adaptive Gauss–Hermite
 * quadrature (AGQ), its exact gradient, and exact-in-the-limit draws of the school effects:
 * the kernels of twolevel/models/bayes/agq.py (whose module docstring gives the maths).
 * Self-contained (nothing shared with ckernels.c), built with the package (setup.py: -O2,
 * OpenMP where the compiler has it, no -ffast-math).
 *
 * School j, rows i in j, b_j = L u_j, u_j ~ N(0, I_q), η_i = o_i + x_iβ + a_i·u, a_i = Lᵀz_i:
 *   f(u) = Σ_i ℓ_i(η_i) − ½|u|²,  û = argmax f (Newton),  H = −∇²f(û) = Σ_i (−ℓ''_i) a_i a_iᵀ + I,
 *   H = R Rᵀ (R lower),  S = R⁻ᵀ,  nodes x_k (K^q, product rule), log-weights lw_k,
 *   Q_j = c_j − ½q log 2π·0 + log|S| + log Σ_k exp(lw_k + f(û + S x_k) + ½|x_k|²)
 * (c_j the school's row constants: log C(n, s) or −log y!). Its gradient in (β, L) is the
 * total derivative of this rule, including the dependence through û and H (implicit function
 * theorem; third derivatives ℓ'''): see agq.py.
 *
 * data: header [q, p, J, n, struct, eta, fbeta, fsd, const, link, K, nthreads] | β prior (3p) |
 *   sd prior (2q) | x_k (K) | lw_k (K) | school starts (J+1) | c_j (J) | X (n p) | Z (n q) |
 *   s (n) | trials (n) | offset (n) | b0 (J q: where Newton starts, in b = L u), rows sorted by
 *   school.
 * x: [β (p) | LKJ packed factor with log diagonal (q(q+1)/2), or log sd (q)]; with struct
 * SD_CPC (2, the sampler's coordinates for LKJ) [β | log sd (q) | atanh of the canonical
 * partial correlations (q(q−1)/2)], the expand callback writing the draw in the packed form.
 * link: 0 binomial logit, 1 binomial probit, 2 binomial cloglog, 3 Poisson log.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_WIN32)
#define TL_EXPORT __declspec(dllexport)
#else
#define TL_EXPORT __attribute__((visibility("default")))
#endif

#ifdef TWOLEVEL_MVEC
/* glibc declares its vector exp only under -ffast-math; declaring it lets the compiler call
 * libmvec's exp in the loops marked omp simd without fast-math's other assumptions */
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double log(double);
#endif

#define A_HEADER 12
enum { A_Q, A_P, A_J, A_N, A_STRUCT, A_ETA, A_FBETA, A_FSD, A_CONST, A_LINK, A_K, A_THREADS };
#define QMAX 3
#define SD_CPC 2 /* struct code: LKJ sampled as log SDs and canonical partial correlations */
/* the per-school functions are inlined into specialisations with q and K known to the compiler
 * (school_agq_spec): their loops over q, K and the K^q nodes are then unrolled or vectorised */
#define TL_INLINE static inline __attribute__((always_inline))
#define LOG_SQRT_2PI 0.91893853320467274178

typedef struct {
    int q, p, strct, link, K, nthreads;
    long J, n;
    const double *pb, *pd, *xk, *lwk, *starts, *cj, *X, *Z, *s, *tr, *off, *b0;
    int zx[QMAX]; /* the column of X equal to column k of Z (−1: none; z_in_x) */
    const double *tab; /* node t's x_t (q) and log-weight (NULL: computed per school) */
} agq_data;

static agq_data get_data(const double *d) {
    agq_data a;
    a.q = (int)d[A_Q];
    a.p = (int)d[A_P];
    a.J = (long)d[A_J];
    a.n = (long)d[A_N];
    a.strct = (int)d[A_STRUCT];
    a.link = (int)d[A_LINK];
    a.K = (int)d[A_K];
    a.nthreads = (int)d[A_THREADS];
    const double *p = d + A_HEADER;
    a.pb = p;
    p += 3 * a.p;
    a.pd = p;
    p += 2 * a.q;
    a.xk = p;
    p += a.K;
    a.lwk = p;
    p += a.K;
    a.starts = p;
    p += a.J + 1;
    a.cj = p;
    p += a.J;
    a.X = p;
    p += a.n * a.p;
    a.Z = p;
    p += a.n * a.q;
    a.s = p;
    p += a.n;
    a.tr = p;
    p += a.n;
    a.off = p;
    p += a.n;
    a.b0 = p;
    for (int k = 0; k < QMAX; k++) a.zx[k] = -1;
    a.tab = NULL;
    return a;
}

/* the product rule's nodes x_t (q) and log-weights Σ_d lw_{t_d} in t order (t = t_0 + K t_1 +
 * K² t_2), T (q + 1) doubles, the same for every school */
static void node_table(const agq_data *a, double *tab) {
    int T = 1;
    for (int k = 0; k < a->q; k++) T *= a->K;
    for (int t = 0; t < T; t++) {
        double *tb = tab + (long)t * (a->q + 1), lw = 0.0;
        int rem = t;
        for (int k = 0; k < a->q; k++) {
            const int ik = rem % a->K;
            rem /= a->K;
            tb[k] = a->xk[ik];
            lw += a->lwk[ik];
        }
        tb[a->q] = lw;
    }
}

/* which columns of Z are columns of X (a random slope of a fixed effect: their per-node sums
 * Σ_r ℓ'_rt z_rk are then the X column's, computed once) */
static void z_in_x(agq_data *a) {
    for (int k = 0; k < a->q; k++) {
        a->zx[k] = -1;
        for (int l = 0; l < a->p && a->zx[k] < 0; l++) {
            long r = 0;
            while (r < a->n && a->X[r * a->p + l] == a->Z[r * a->q + k]) r++;
            if (r == a->n) a->zx[k] = l;
        }
    }
}

/* ------------------------------------------------------------------ one row's log-likelihood */

/* log Φ(t) and its first three derivatives (h1 = φ/Φ, h2 = −h1(t + h1), h3 = −h2(t + h1) − h1(1 + h2)) */
static void log_ndtr3(double t, double *h0, double *h1, double *h2, double *h3) {
    double m;
    if (t > -20.0) {
        const double Phi = 0.5 * erfc(-t / 1.4142135623730950488);
        *h0 = log(Phi);
        m = exp(-0.5 * t * t - LOG_SQRT_2PI - *h0);
    } else { /* Mills ratio by its continued fraction: Φ(t) = φ(t)/(−t) · 1/(1 + 1/t² ...) */
        const double x = -t;
        double cf = x;
        for (int k = 40; k >= 1; k--) cf = x + k / cf;
        m = cf; /* φ/Φ = cf(x) for t = −x */
        *h0 = -0.5 * t * t - LOG_SQRT_2PI - log(m);
    }
    *h1 = m;
    *h2 = -m * (t + m);
    *h3 = -(*h2) * (t + m) - m * (1.0 + *h2);
}

/* ℓ(η) of a row with s successes of n trials (or count s) and its derivatives d1, d2, d3 in η */
static inline double row_ll(int link, double eta, double s, double n, double *d1, double *d2,
                            double *d3) {
    switch (link) {
    case 0: { /* logit: sη − n log(1 + e^η) */
        const double e = exp(-fabs(eta));
        const double mu = eta >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        const double v = mu * (1.0 - mu);
        *d1 = s - n * mu;
        *d2 = -n * v;
        *d3 = -n * v * (1.0 - 2.0 * mu);
        return s * eta - n * ((eta > 0.0 ? eta : 0.0) + log1p(e));
    }
    case 3: { /* Poisson log: sη − e^η */
        const double mu = exp(eta);
        *d1 = s - mu;
        *d2 = -mu;
        *d3 = -mu;
        return s * eta - mu;
    }
    case 1: { /* probit: s log Φ(η) + (n − s) log Φ(−η) */
        double ll = 0.0, a0, a1, a2, a3;
        *d1 = *d2 = *d3 = 0.0;
        if (s > 0.0) {
            log_ndtr3(eta, &a0, &a1, &a2, &a3);
            ll += s * a0;
            *d1 += s * a1;
            *d2 += s * a2;
            *d3 += s * a3;
        }
        if (n - s > 0.0) {
            const double f = n - s;
            log_ndtr3(-eta, &a0, &a1, &a2, &a3);
            ll += f * a0;
            *d1 -= f * a1;
            *d2 += f * a2;
            *d3 -= f * a3;
        }
        return ll;
    }
    default: { /* cloglog: μ = 1 − exp(−v), v = e^η: s log μ − (n − s) v;
                * k = d log μ/dη = v/(e^v − 1), c = v/(1 − e^{−v}), k' = k(1 − c), c' = c(1 − k) */
        const double v = exp(eta);
        double ll = -(n - s) * v;
        *d1 = -(n - s) * v;
        *d2 = -(n - s) * v;
        *d3 = -(n - s) * v;
        if (s > 0.0) {
            const double em = -expm1(-v); /* μ */
            const double k = v < 1e-300 ? 1.0 : v * exp(-v) / em;
            const double c = v < 1e-300 ? 1.0 : v / em;
            ll += s * log(em);
            *d1 += s * k;
            *d2 += s * k * (1.0 - c);
            *d3 += s * (k * (1.0 - c) * (1.0 - c) - k * c * (1.0 - k));
        }
        return ll;
    }
    }
}

/* the derivatives of a row's log-likelihood without the value (no logarithm for the logit
 * and log links) */
static inline void row_d(int link, double eta, double s, double n, double *d1, double *d2,
                         double *d3) {
    if (link == 0) {
        const double e = exp(-fabs(eta));
        const double mu = eta >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        const double v = mu * (1.0 - mu);
        *d1 = s - n * mu;
        *d2 = -n * v;
        *d3 = -n * v * (1.0 - 2.0 * mu);
    } else if (link == 3) {
        const double mu = exp(eta);
        *d1 = s - mu;
        *d2 = -mu;
        *d3 = -mu;
    } else {
        (void)row_ll(link, eta, s, n, d1, d2, d3);
    }
}

/* ----------------------------------------------------------------------- small dense algebra */

/* lower Cholesky factor R of the q×q symmetric H (row-major); 0 if not positive definite */
TL_INLINE int chol(int q, const double *H, double *R) {
    for (int i = 0; i < q; i++)
        for (int j = 0; j <= i; j++) {
            double t = H[i * q + j];
            for (int k = 0; k < j; k++) t -= R[i * q + k] * R[j * q + k];
            if (i == j) {
                if (!(t > 0.0)) return 0;
                R[i * q + i] = sqrt(t);
            } else {
                R[i * q + j] = t / R[j * q + j];
            }
        }
    for (int i = 0; i < q; i++)
        for (int j = i + 1; j < q; j++) R[i * q + j] = 0.0;
    return 1;
}

/* solve R Rᵀ y = b in place */
TL_INLINE void chol_solve(int q, const double *R, double *b) {
    for (int i = 0; i < q; i++) {
        double t = b[i];
        for (int k = 0; k < i; k++) t -= R[i * q + k] * b[k];
        b[i] = t / R[i * q + i];
    }
    for (int i = q - 1; i >= 0; i--) {
        double t = b[i];
        for (int k = i + 1; k < q; k++) t -= R[k * q + i] * b[k];
        b[i] = t / R[i * q + i];
    }
}

/* S = R⁻ᵀ (upper), full q×q row-major */
TL_INLINE void inv_t(int q, const double *R, double *S) {
    double Ri[QMAX * QMAX];
    for (int c = 0; c < q; c++)
        for (int i = 0; i < q; i++) {
            if (i < c) {
                Ri[i * q + c] = 0.0;
                continue;
            }
            double t = (i == c) ? 1.0 : 0.0;
            for (int l = c; l < i; l++) t -= R[i * q + l] * Ri[l * q + c];
            Ri[i * q + c] = t / R[i * q + i];
        }
    for (int i = 0; i < q; i++)
        for (int j = 0; j < q; j++) S[i * q + j] = Ri[j * q + i];
}

/* ------------------------------------------------------------------------- one school's AGQ */

typedef struct {
    double f, g[QMAX], H[QMAX * QMAX];
} pass_out;

/* one pass over the school's rows lo..hi at u: want 0: f only; want 1: the score g and
 * H = −∇²f (f not computed);
 * d (3 per row) receives ℓ', ℓ'', ℓ''' when not NULL */
TL_INLINE void pass_mode(const agq_data *a, long lo, long hi, const double *eta0, const double *A,
                      const double *u, int want, double *d, pass_out *o) {
    const int q = a->q;
    double f = 0.0, g[QMAX] = {0}, H[QMAX * QMAX] = {0};
    if (!want && a->link == 0) { /* logit value: Σ sη − log Π (1 + e^η) over Bernoulli rows */
        double prod = 1.0;
        for (long r = lo; r < hi; r++) {
            const double *ar = A + r * q;
            double eta = eta0[r];
            for (int k = 0; k < q; k++) eta += ar[k] * u[k];
            const double nr = a->tr[r];
            f += a->s[r] * eta;
            if (nr == 1.0 && eta < 30.0) {
                prod *= 1.0 + exp(eta);
                if (prod > 1e200) {
                    f -= log(prod);
                    prod = 1.0;
                }
            } else {
                f -= nr * ((eta > 0.0 ? eta : 0.0) + log1p(exp(-fabs(eta))));
            }
        }
        f -= log(prod);
        for (int k = 0; k < q; k++) f -= 0.5 * u[k] * u[k];
        o->f = f;
        return;
    }
    for (long r = lo; r < hi; r++) {
        const double *ar = A + r * q;
        double eta = eta0[r];
        for (int k = 0; k < q; k++) eta += ar[k] * u[k];
        double d1, d2, d3;
        if (want)
            row_d(a->link, eta, a->s[r], a->tr[r], &d1, &d2, &d3);
        else
            f += row_ll(a->link, eta, a->s[r], a->tr[r], &d1, &d2, &d3);
        if (d) {
            d[3 * (r - lo)] = d1;
            d[3 * (r - lo) + 1] = d2;
            d[3 * (r - lo) + 2] = d3;
        }
        if (want) {
            for (int k = 0; k < q; k++) {
                g[k] += d1 * ar[k];
                for (int l = 0; l <= k; l++) H[k * q + l] -= d2 * ar[k] * ar[l];
            }
        }
    }
    for (int k = 0; k < q; k++) {
        f -= 0.5 * u[k] * u[k];
        g[k] -= u[k];
        H[k * q + k] += 1.0;
        for (int l = 0; l < k; l++) H[l * q + k] = H[k * q + l];
    }
    o->f = f;
    memcpy(o->g, g, sizeof(g));
    memcpy(o->H, H, sizeof(H));
}

/* pass_mode's want = 1 pass for the logit and log links with d (ℓ', ℓ'', ℓ''' per row): the
 * linear predictors and the exponentials of a school's rows first, in loops the compiler
 * vectorises, then the score and information */
TL_INLINE void pass_fast(const agq_data *a, long lo, long hi, const double *eta0, const double *A,
                      const double *u, double *d, pass_out *o) {
    const int q = a->q;
    const long m = hi - lo;
    const double *restrict s = a->s + lo, *restrict tr = a->tr + lo, *restrict e0 = eta0 + lo;
    double *restrict dd = d;
    if (q == 2 && a->link == 0) { /* the common case in one vectorised loop with reductions */
        const double *restrict A2 = A + 2 * lo, u0 = u[0], u1 = u[1];
        double g0 = 0.0, g1 = 0.0, h00 = 0.0, h10 = 0.0, h11 = 0.0;
#pragma omp simd reduction(+ : g0, g1, h00, h10, h11)
        for (long r = 0; r < m; r++) {
            const double a0 = A2[2 * r], a1 = A2[2 * r + 1];
            const double E = exp(-(e0[r] + a0 * u0 + a1 * u1)); /* as below */
            const double mu = 1.0 / (1.0 + E), omu = 1.0 / (1.0 + 1.0 / E), v = mu * omu;
            const double d1 = s[r] - tr[r] * mu, d2 = -tr[r] * v;
            dd[3 * r] = d1;
            dd[3 * r + 1] = d2;
            dd[3 * r + 2] = d2 * (omu - mu);
            g0 += d1 * a0;
            g1 += d1 * a1;
            h00 -= d2 * a0 * a0;
            h10 -= d2 * a1 * a0;
            h11 -= d2 * a1 * a1;
        }
        o->f = 0.0;
        o->g[0] = g0 - u0;
        o->g[1] = g1 - u1;
        o->H[0] = h00 + 1.0;
        o->H[1] = o->H[2] = h10;
        o->H[3] = h11 + 1.0;
        return;
    }
    /* d's three slots per row hold η, then e^η (or e^{−|η|}), then the derivatives */
    if (q == 1) {
        const double *restrict A1 = A + lo;
        for (long r = 0; r < m; r++) dd[3 * r] = e0[r] + A1[r] * u[0];
    } else {
        for (long r = 0; r < m; r++) {
            const double *ar = A + (lo + r) * q;
            double eta = e0[r];
            for (int k = 0; k < q; k++) eta += ar[k] * u[k];
            dd[3 * r] = eta;
        }
    }
    if (a->link == 3) {
#pragma omp simd
        for (long r = 0; r < m; r++) {
            const double mu = exp(dd[3 * r]);
            dd[3 * r] = s[r] - mu;
            dd[3 * r + 1] = -mu;
            dd[3 * r + 2] = -mu;
        }
    } else {
#pragma omp simd
        for (long r = 0; r < m; r++) {
            const double eta = dd[3 * r];
            /* μ = 1/(1 + E), 1 − μ = 1/(1 + 1/E) with E = e^{−η} (right for E = 0 and ∞): no
             * branch, so the loop is vectorised */
            const double E = exp(-eta);
            const double mu = 1.0 / (1.0 + E), omu = 1.0 / (1.0 + 1.0 / E), v = mu * omu;
            dd[3 * r] = s[r] - tr[r] * mu;
            dd[3 * r + 1] = -tr[r] * v;
            dd[3 * r + 2] = -tr[r] * v * (omu - mu);
        }
    }
    double g[QMAX] = {0}, H[QMAX * QMAX] = {0};
    for (long r = 0; r < m; r++) {
        const double *ar = A + (lo + r) * q;
        const double d1 = dd[3 * r], d2 = dd[3 * r + 1];
        for (int k = 0; k < q; k++) {
            g[k] += d1 * ar[k];
            for (int l = 0; l <= k; l++) H[k * q + l] -= d2 * ar[k] * ar[l];
        }
    }
    for (int k = 0; k < q; k++) {
        g[k] -= u[k];
        H[k * q + k] += 1.0;
        for (int l = 0; l < k; l++) H[l * q + k] = H[k * q + l];
    }
    o->f = 0.0;
    memcpy(o->g, g, sizeof(g));
    memcpy(o->H, H, sizeof(H));
}

/* the mode û by Newton's method with step halving from u = 0; returns the pass at û (with d)
 * and R = chol(H(û)); 0 when it fails */
TL_INLINE int find_mode(const agq_data *a, long j, const double *L, const double *eta0,
                     const double *A, double *u, double *d, pass_out *o, double *R) {
    const int q = a->q;
    const long lo = (long)a->starts[j], hi = (long)a->starts[j + 1];
    const double *b0 = a->b0 + j * q;
    for (int k = 0; k < q; k++) { /* u = L⁻¹ b0: the same start for any (β, L) and thread */
        double t = b0[k];
        for (int m = 0; m < k; m++) t -= L[k * q + m] * u[m];
        u[k] = t / L[k * q + k];
    }
    const int fastp = a->link == 0 || a->link == 3;
    if (fastp)
        pass_fast(a, lo, hi, eta0, A, u, d, o);
    else
        pass_mode(a, lo, hi, eta0, A, u, 1, d, o);
    for (int it = 0; it < 100; it++) {
        if (!chol(q, o->H, R)) return 0;
        double step[QMAX], un[QMAX];
        memcpy(step, o->g, sizeof(double) * q);
        chol_solve(q, R, step);
        double mx = 0.0;
        for (int k = 0; k < q; k++) mx = fmax(mx, fabs(step[k]));
        if (!isfinite(mx)) return 0;
        if (mx < 1e-14 * (1.0 + fabs(u[0]))) break;
        /* damped Newton on the concave f: along u + tδ the slope starts at gᵀδ > 0; a step
         * whose end slope is below −gᵀδ overshot the maximum by too much and is halved */
        pass_out on;
        double t = 1.0, slope0 = 0.0;
        for (int k = 0; k < q; k++) slope0 += o->g[k] * step[k];
        for (int h = 0; h < 60; h++) {
            for (int k = 0; k < q; k++) un[k] = u[k] + t * step[k];
            if (fastp)
                pass_fast(a, lo, hi, eta0, A, un, d, &on);
            else
                pass_mode(a, lo, hi, eta0, A, un, 1, d, &on);
            double slope1 = 0.0;
            for (int k = 0; k < q; k++) slope1 += on.g[k] * step[k];
            if (isfinite(slope1) && slope1 >= -slope0) break;
            t *= 0.5;
        }
        memcpy(u, un, sizeof(double) * q);
        *o = on;
        if (t * mx < 1e-8) { /* quadratic convergence: the next step would be ~1e-16 */
            if (!chol(q, o->H, R)) return 0;
            return 1;
        }
    }
    return chol(q, o->H, R);
}

/* The fast path's sums over a school's rows for all T = K^q nodes at once (logit and log links):
 * with e_rt = e^{η_rt} = er[0] Π_d er[1 + dK + t_d] (t = t_0 + K t_1 + K² t_2), node t gets
 * nd[0] = −Σ_r n_r log(1 + e_rt) (logit; Bernoulli rows as the log of a running product,
 * flushed before it can overflow) or −Σ_r e_rt (log), and with want F1 = Σ_r ℓ'_rt x_r and
 * F2 = Σ_r ℓ'_rt z_r at nd[1..p], nd[1+p..p+q] (ℓ' = s − n e/(1 + e), or s − e). The per-node
 * accumulators are laid out node-contiguous in acc (T (3 + p + q) doubles after the node array),
 * so each row's update is a loop over the nodes the compiler vectorises. */
TL_INLINE void nodes_fast(const agq_data *a, long lo, long hi, const double *ex, double *node,
                       int T, int want) {
    const int q = a->q, p = a->p, K = a->K, KQ = q * K, ns = 1 + p + 4 * q;
    double *acc = node + (long)T * ns;
    double *restrict e = acc, *restrict prod = acc + T, *restrict lsum = acc + 2 * T,
                     *restrict F = acc + 3 * T; /* F: (p + q) rows of T */
    const int nF = want ? p + q : 0;
    for (int t = 0; t < T; t++) {
        prod[t] = 1.0;
        lsum[t] = 0.0;
    }
    memset(F, 0, sizeof(double) * (size_t)nF * T);
    double ub = 0.0; /* an upper bound of log prod_t over the nodes */
    for (long r = lo; r < hi; r++) {
        const double *er = ex + (r - lo) * (1 + KQ);
        const double E0 = er[0], sr = a->s[r], nr = a->tr[r];
        if (q == 1) {
            for (int t = 0; t < K; t++) e[t] = E0 * er[1 + t];
        } else if (q == 2) {
            for (int i1 = 0; i1 < K; i1++) {
                const double c = E0 * er[1 + K + i1];
                for (int i0 = 0; i0 < K; i0++) e[i1 * K + i0] = c * er[1 + i0];
            }
        } else {
            for (int i2 = 0; i2 < K; i2++)
                for (int i1 = 0; i1 < K; i1++) {
                    const double c = E0 * er[1 + 2 * K + i2] * er[1 + K + i1];
                    for (int i0 = 0; i0 < K; i0++) e[(i2 * K + i1) * K + i0] = c * er[1 + i0];
                }
        }
        if (a->link == 3) {
#pragma omp simd
            for (int t = 0; t < T; t++) {
                lsum[t] += e[t];
                e[t] = sr - e[t];
            }
        } else if (nr == 1.0) {
            const double rb = fmax(ex[(hi - lo) * (1 + KQ) + (r - lo)], 0.0) + 0.6931471805599453;
            if (ub + rb > 700.0) {
                for (int t = 0; t < T; t++) {
                    lsum[t] += log(prod[t]);
                    prod[t] = 1.0;
                }
                ub = 0.0;
            }
            ub += rb;
#pragma omp simd
            for (int t = 0; t < T; t++) {
                const double one = 1.0 + e[t];
                prod[t] *= one;
                e[t] = sr - e[t] / one;
            }
        } else {
            for (int t = 0; t < T; t++) {
                lsum[t] += nr * log1p(e[t]);
                e[t] = sr - nr * (e[t] / (1.0 + e[t]));
            }
        }
        if (want) {
            const double *xr = a->X + r * p, *zr = a->Z + r * q;
            for (int l = 0; l < p + q; l++) {
                if (l >= p && a->zx[l - p] >= 0) continue; /* an X column's sums */
                const double c = l < p ? xr[l] : zr[l - p];
                double *restrict Fl = F + (long)l * T;
#pragma omp simd
                for (int t = 0; t < T; t++) Fl[t] += e[t] * c;
            }
        }
    }
#pragma omp simd
    for (int t = 0; t < T; t++) lsum[t] += log(prod[t]);
    for (int t = 0; t < T; t++) {
        double *nd = node + (long)t * ns;
        nd[0] = -lsum[t];
        for (int l = 0; l < nF; l++) {
            const int src = l >= p && a->zx[l - p] >= 0 ? a->zx[l - p] : l;
            nd[1 + l] = F[(long)src * T + t];
        }
    }
}

/* Q_j of one school and (when gb/gL not NULL) its gradient in β (p) and L (q×q lower, row-major)
 * added to gb/gL. eta0 = o + Xβ and A (rows a_i = Lᵀz_i) are the whole data's; d scratch of
 * 3·(hi − lo); node scratch of K^q·(1 + p + 4q + 3 + p + q) doubles; ex (NULL: no fast path)
 * scratch of (hi − lo)·(2 + qK) doubles. u_out receives û and R_out R. */
TL_INLINE double school_agq(const agq_data *a, long j, const double *L, const double *eta0,
                         const double *A, double *d, double *node, double *ex, double *gb,
                         double *gL, double *u_out, double *R_out) {
    const int q = a->q, p = a->p, K = a->K;
    const long lo = (long)a->starts[j], hi = (long)a->starts[j + 1];
    double u[QMAX], R[QMAX * QMAX], S[QMAX * QMAX];
    pass_out o;
    if (!find_mode(a, j, L, eta0, A, u, d, &o, R)) return NAN;
    if (u_out) memcpy(u_out, u, sizeof(double) * q);
    if (R_out) memcpy(R_out, R, sizeof(double) * q * q);
    inv_t(q, R, S);
    double logdetS = 0.0;
    for (int k = 0; k < q; k++) logdetS -= log(R[k * q + k]);
    int total = 1;
    for (int k = 0; k < q; k++) total *= K;
    const int want = gb != NULL;
    const int stride = 1 + p + 2 * q + q; /* log term, F1 (p), F2 (q), u_k (q), x_k (q) */
    /* logit and log links: e^η at a node is e^η̂ Π_d e^{α_d x_d} (α = Sᵀa), so the K^q nodes
     * need 1 + qK exponentials per row (computed for the school's rows in one vectorised loop)
     * instead of K^q exponentials and logarithms; Σ_i log(1 + e^η_i) over Bernoulli rows is
     * the logarithm of a product. Each row then updates all nodes at once (loops over the
     * nodes the compiler vectorises: nodes_fast). */
    const int KQ = q * K;
    int fast = (a->link == 0 || a->link == 3) && ex != NULL;
    double sE = 0.0, sA[QMAX] = {0};
    if (fast) {
        double xmax = 0.0;
        for (int k = 0; k < K; k++) xmax = fmax(xmax, fabs(a->xk[k]));
        const long m = hi - lo;
        double *bnd = ex + m * (1 + KQ); /* the rows' bounds of η over the nodes */
        for (long r = lo; r < hi && fast; r++) {
            const double *ar = A + r * q;
            double etah = eta0[r], al[QMAX], bound;
            for (int k = 0; k < q; k++) etah += ar[k] * u[k];
            bound = etah;
            for (int dd = 0; dd < q; dd++) {
                double t = 0.0;
                for (int k = 0; k <= dd; k++) t += S[k * q + dd] * ar[k];
                al[dd] = t;
                bound += fabs(t) * xmax;
                sA[dd] += a->s[r] * t;
                if (fabs(t) * xmax > 300.0) bound = INFINITY; /* each factor finite too */
            }
            if (bound > 300.0) {
                fast = 0;
                break;
            }
            sE += a->s[r] * etah;
            double *er = ex + (r - lo) * (1 + KQ); /* the exponents first */
            er[0] = etah;
            bnd[r - lo] = bound;
            for (int dd = 0; dd < q; dd++)
                for (int k = 0; k < K; k++) er[1 + dd * K + k] = al[dd] * a->xk[k];
        }
        if (fast) { /* then their exponentials in one loop the compiler vectorises */
            const long ne = m * (1 + KQ);
#pragma omp simd
            for (long i = 0; i < ne; i++) ex[i] = exp(ex[i]);
        }
    }
    if (fast) {
        nodes_fast(a, lo, hi, ex, node, total, want);
    }
    double mx = -INFINITY;
    for (int t = 0; t < total; t++) {
        double *nd = node + (long)t * (stride + q);
        double xv[QMAX], uk[QMAX], lw = 0.0, half = 0.0;
        if (a->tab) { /* the rule's table (node_table) */
            const double *tb = a->tab + (long)t * (q + 1);
            for (int k = 0; k < q; k++) xv[k] = tb[k];
            lw = tb[q];
            for (int k = 0; k < q; k++) half += 0.5 * xv[k] * xv[k];
        } else {
            int rem = t;
            for (int k = 0; k < q; k++) {
                const int ik = rem % K;
                rem /= K;
                xv[k] = a->xk[ik];
                lw += a->lwk[ik];
                half += 0.5 * xv[k] * xv[k];
            }
        }
        for (int k = 0; k < q; k++) {
            double s = u[k];
            for (int l = k; l < q; l++) s += S[k * q + l] * xv[l];
            uk[k] = s;
        }
        double f = 0.0;
        if (fast) { /* nodes_fast left −Σ log(1 + e^η) (or −Σ e^η) in nd[0], F1, F2 in place */
            f = sE + nd[0];
            for (int k = 0; k < q; k++) f += sA[k] * xv[k];
        } else {
            double F1[64], F2[QMAX] = {0};
            for (int l = 0; l < p; l++) F1[l] = 0.0;
            for (long r = lo; r < hi; r++) {
                const double *ar = A + r * q;
                double eta = eta0[r];
                for (int k = 0; k < q; k++) eta += ar[k] * uk[k];
                double d1, d2, d3;
                f += row_ll(a->link, eta, a->s[r], a->tr[r], &d1, &d2, &d3);
                if (want) {
                    const double *xr = a->X + r * p, *zr = a->Z + r * q;
                    for (int l = 0; l < p; l++) F1[l] += d1 * xr[l];
                    for (int k = 0; k < q; k++) F2[k] += d1 * zr[k];
                }
            }
            if (want) {
                memcpy(nd + 1, F1, sizeof(double) * p);
                memcpy(nd + 1 + p, F2, sizeof(double) * q);
            }
        }
        for (int k = 0; k < q; k++) f -= 0.5 * uk[k] * uk[k];
        nd[0] = lw + f + half;
        if (nd[0] > mx) mx = nd[0];
        if (want) {
            memcpy(nd + 1 + p + q, uk, sizeof(double) * q);
            memcpy(nd + 1 + p + 2 * q, xv, sizeof(double) * q);
        }
    }
    /* the nodes' unnormalised weights, contiguous (nodes_fast's scratch, free again) for a
     * vectorised exp */
    double *restrict wt = node + (long)total * (stride + q), sum = 0.0;
    for (int t = 0; t < total; t++) wt[t] = node[(long)t * (stride + q)] - mx;
#pragma omp simd reduction(+ : sum)
    for (int t = 0; t < total; t++) {
        wt[t] = exp(wt[t]);
        sum += wt[t];
    }
    const double Q = a->cj[j] + logdetS + mx + log(sum);
    if (!want) return Q;

    /* ---- gradient: the nodes' part with û, S fixed */
    double v[QMAX] = {0}, GS[QMAX * QMAX] = {0}, Lf2u[QMAX * QMAX] = {0};
    for (int t = 0; t < total; t++) {
        const double *nd = node + (long)t * (stride + q);
        const double w = wt[t] / sum;
        const double *F1 = nd + 1, *F2 = nd + 1 + p, *uk = nd + 1 + p + q,
                     *xv = nd + 1 + p + 2 * q;
        for (int l = 0; l < p; l++) gb[l] += w * F1[l];
        double gu[QMAX];
        for (int k = 0; k < q; k++) { /* ∇_u f(u_k) = Lᵀ F2 − u_k */
            double s = -uk[k];
            for (int m = k; m < q; m++) s += L[m * q + k] * F2[m];
            gu[k] = s;
            v[k] += w * s;
        }
        for (int k = 0; k < q; k++)
            for (int l = 0; l < q; l++) {
                GS[k * q + l] += w * gu[k] * xv[l];
                Lf2u[k * q + l] += w * F2[k] * uk[l]; /* ∂f/∂L = F2 u_kᵀ */
            }
    }
    for (int k = 0; k < q; k++)
        for (int l = 0; l < q; l++) GS[k * q + l] += R[k * q + l]; /* ∂ log|S|/∂S = S⁻ᵀ = R */
    /* G_R = −S G_Sᵀ S (lower part); M = Φ(Rᵀ G_R); G_H = sym(S M Sᵀ) */
    double T1[QMAX * QMAX], GR[QMAX * QMAX], M[QMAX * QMAX], GH[QMAX * QMAX];
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++) {
            double t = 0.0;
            for (int m = 0; m < q; m++) t += S[i * q + m] * GS[k * q + m];
            T1[i * q + k] = t;
        }
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++) {
            double t = 0.0;
            for (int m = 0; m < q; m++) t += T1[i * q + m] * S[m * q + k];
            GR[i * q + k] = k <= i ? -t : 0.0;
        }
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++) {
            double t = 0.0;
            for (int m = 0; m < q; m++) t += R[m * q + i] * GR[m * q + k];
            M[i * q + k] = k < i ? t : (k == i ? 0.5 * t : 0.0);
        }
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++) {
            double t = 0.0;
            for (int m = 0; m < q; m++) t += S[i * q + m] * M[m * q + k];
            T1[i * q + k] = t;
        }
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++) {
            double t = 0.0;
            for (int m = 0; m < q; m++) t += T1[i * q + m] * S[k * q + m];
            GR[i * q + k] = t; /* S M Sᵀ */
        }
    for (int i = 0; i < q; i++)
        for (int k = 0; k < q; k++) GH[i * q + k] = 0.5 * (GR[i * q + k] + GR[k * q + i]);

    /* ---- the pass at û: Ψ = ⟨G_H, H⟩ and the pieces of cᵀ∂_θ∇_u f */
    double gpsi_u[QMAX] = {0}, Pz[QMAX] = {0}, Pzga[QMAX * QMAX] = {0}, Dza[QMAX * QMAX] = {0},
           F2h[QMAX] = {0}, Px[64], Dxa[64 * QMAX];
    for (int l = 0; l < p; l++) Px[l] = 0.0;
    for (int l = 0; l < p * q; l++) Dxa[l] = 0.0;
    for (long r = lo; r < hi; r++) {
        const double *ar = A + r * q, *xr = a->X + r * p, *zr = a->Z + r * q;
        const double d1 = d[3 * (r - lo)], d2 = d[3 * (r - lo) + 1], d3 = d[3 * (r - lo) + 2];
        double Ga[QMAX], aGa = 0.0;
        for (int k = 0; k < q; k++) {
            double t = 0.0;
            for (int m = 0; m < q; m++) t += GH[k * q + m] * ar[m];
            Ga[k] = t;
            aGa += ar[k] * t;
        }
        const double w3 = -d3 * aGa;
        for (int k = 0; k < q; k++) {
            gpsi_u[k] += w3 * ar[k];
            Pz[k] += w3 * zr[k];
            F2h[k] += d1 * zr[k];
            for (int m = 0; m < q; m++) {
                Pzga[k * q + m] -= 2.0 * d2 * zr[k] * Ga[m];
                Dza[k * q + m] += d2 * zr[k] * ar[m];
            }
        }
        for (int l = 0; l < p; l++) {
            Px[l] += w3 * xr[l];
            for (int m = 0; m < q; m++) Dxa[l * q + m] += d2 * xr[l] * ar[m];
        }
    }
    double c[QMAX];
    for (int k = 0; k < q; k++) c[k] = v[k] + gpsi_u[k];
    chol_solve(q, R, c);
    for (int l = 0; l < p; l++) {
        double t = Px[l];
        for (int m = 0; m < q; m++) t += Dxa[l * q + m] * c[m];
        gb[l] += t;
    }
    for (int k = 0; k < q; k++) {
        double zc = 0.0; /* (D_za c)_k */
        for (int m = 0; m < q; m++) zc += Dza[k * q + m] * c[m];
        for (int l = 0; l <= k; l++)
            gL[k * q + l] += Lf2u[k * q + l] + (Pz[k] + zc) * u[l] + Pzga[k * q + l]
                             + F2h[k] * c[l];
    }
    return Q;
}

/* ------------------------------------------------------------------------------ the priors */

static double positive_logp(int code, double v, double a, double b, double *dv) {
    switch (code) {
    case 0:
        *dv = -v / (a * a);
        return -0.5 * (v / a) * (v / a);
    case 1:
        *dv = -(b + 1.0) * v / (b * a * a + v * v);
        return -0.5 * (b + 1.0) * log1p(v * v / (b * a * a));
    case 2:
        *dv = -2.0 * v / (a * a + v * v);
        return -log1p((v / a) * (v / a));
    case 3:
        *dv = -a;
        return -a * v;
    default:
        *dv = (a - 1.0) / v - b;
        return (a - 1.0) * log(v) - b * v;
    }
}

/* the correlation factor Lc (row-major lower, unit rows) from the canonical partial
 * correlations z = tanh(y) (Stan's cholesky_factor_corr transform): row i ≥ 1 has
 * Lc_i0 = z_i0, Lc_ij = z_ij (1 − Σ_{l<j} Lc_il²)^{1/2}, Lc_ii = (1 − Σ_{l<i} Lc_il²)^{1/2};
 * y in row order (1,0), (2,0), (2,1) */
static void cpc_factor(const double *y, int q, double *Lc) {
    int k = 0;
    memset(Lc, 0, sizeof(double) * q * q);
    Lc[0] = 1.0;
    for (int i = 1; i < q; i++) {
        double ss = 0.0;
        for (int j = 0; j < i; j++) {
            const double z = tanh(y[k++]);
            Lc[i * q + j] = z * sqrt(1.0 - ss);
            ss += Lc[i * q + j] * Lc[i * q + j];
        }
        Lc[i * q + i] = sqrt(1.0 - ss);
    }
}

static void unpack_L(const double *x, int k0, int strct, int q, double *L) {
    int k = k0;
    memset(L, 0, sizeof(double) * q * q);
    if (strct == SD_CPC) { /* L = diag(sd) Lc */
        cpc_factor(x + k0 + q, q, L);
        for (int i = 0; i < q; i++) {
            const double sd = exp(x[k0 + i]);
            for (int j = 0; j <= i; j++) L[i * q + j] *= sd;
        }
        return;
    }
    if (strct == 0) {
        for (int i = 0; i < q; i++)
            for (int j = 0; j <= i; j++) {
                L[i * q + j] = (i == j) ? exp(x[k]) : x[k];
                k++;
            }
    } else {
        for (int i = 0; i < q; i++) L[i * q + i] = exp(x[k + i]);
    }
}

/* the β prior (Normal / StudentT) added to *lp and grad[0:p] */
static void beta_prior(double *lp, const double *x, double *grad, const double *pb, int p,
                       int fb) {
    for (int k = 0; k < p; k++) {
        const double mu = pb[3 * k], sk = pb[3 * k + 1], nu = pb[3 * k + 2], r = x[k] - mu;
        if (fb == 0) {
            *lp += -0.5 * (r / sk) * (r / sk);
            grad[k] += -r / (sk * sk);
        } else {
            *lp += -0.5 * (nu + 1.0) * log1p((r / sk) * (r / sk) / nu);
            grad[k] += -(nu + 1.0) * r / (nu * sk * sk + r * r);
        }
    }
}

/* the covariance factor's prior with its transform's Jacobian (LKJCholeskyCov as PyMC, or
 * independent log sd), and GL (∂/∂L of the likelihood) mapped to grad[k0:] */
static void cov_prior(double *lp_, const double *x, double *grad, int k0, int strct, double eta,
                      int fd, const double *pd, int q, const double *L, double *GL) {
    double lp = *lp_, v, dv;
    if (strct == 0) {
        for (int i = 0; i < q; i++) {
            double ss = 0.0;
            for (int j = 0; j <= i; j++) ss += L[i * q + j] * L[i * q + j];
            const double sd = sqrt(ss), kk = 2.0 * eta - 2.0 + q - i;
            v = positive_logp(fd, sd, pd[2 * i], pd[2 * i + 1], &dv);
            lp += kk * (log(L[i * q + i]) - log(sd)) - i * log(sd) + v;
            for (int j = 0; j <= i; j++) {
                double g = -(kk + i) * L[i * q + j] / ss + dv * L[i * q + j] / sd;
                if (i == j) g += kk / L[i * q + i];
                GL[i * q + j] += g;
            }
        }
        int k = k0;
        for (int i = 0; i < q; i++)
            for (int j = 0; j <= i; j++) {
                if (i == j) {
                    lp += x[k];
                    grad[k] = L[i * q + i] * GL[i * q + i] + 1.0;
                } else {
                    grad[k] = GL[i * q + j];
                }
                k++;
            }
    } else if (strct == SD_CPC) {
        /* x = [log sd (q) | y (q(q−1)/2)], L = diag(sd) Lc(tanh y): the density of (sd, corr)
         * is Π p(sd_i) · LKJ(η), here with the Jacobians of sd = e^x and of the CPC transform:
         * log p = Σ_i [log p(sd_i) + x_i] + Σ_{i≥1} (q − i − 1 + 2η − 2) log Lc_ii
         *         + Σ log(1 − z²) + Σ_{i, 1≤j<i} ½ log(1 − Σ_{l<j} Lc_il²)
         * (Stan's lkj_corr_cholesky and cholesky_factor_corr; 0-based i). The gradient of the
         * likelihood part, G_L = GL, is carried back row by row (reverse mode). */
        for (int i = 0; i < q; i++) {
            double sd = 0.0, gl = 0.0;
            sd = exp(x[k0 + i]);
            for (int j = 0; j <= i; j++) gl += GL[i * q + j] * L[i * q + j];
            v = positive_logp(fd, sd, pd[2 * i], pd[2 * i + 1], &dv);
            lp += v + x[k0 + i];
            grad[k0 + i] = gl + sd * dv + 1.0;
        }
        const double *y = x + k0 + q;
        double *gy = grad + k0 + q;
        int k = 0;
        for (int i = 1; i < q; i++) {
            const double sd = exp(x[k0 + i]);
            double z[QMAX], ssb[QMAX + 1], Lc[QMAX], Lb[QMAX], ssbar[QMAX + 1];
            double ss = 0.0;
            for (int j = 0; j < i; j++) {
                z[j] = tanh(y[k + j]);
                ssb[j] = ss; /* Σ_{l<j} Lc_il² */
                Lc[j] = z[j] * sqrt(1.0 - ss);
                ss += Lc[j] * Lc[j];
                lp += log1p(-z[j] * z[j]);
                if (j >= 1) lp += 0.5 * log1p(-ssb[j]);
            }
            ssb[i] = ss;
            const double coef = q - i - 1 + 2.0 * eta - 2.0, dii = sqrt(1.0 - ss);
            lp += coef * log(dii);
            for (int j = 0; j < i; j++) Lb[j] = GL[i * q + j] * sd;
            /* the diagonal Lc_ii = (1 − ss_i)^{1/2}: its likelihood term and the LKJ term */
            ssbar[i] = -GL[i * q + i] * sd / (2.0 * dii) - 0.5 * coef / (1.0 - ss);
            double zb[QMAX];
            for (int j = i - 1; j >= 0; j--) {
                /* ss_{j+1} = ss_j + Lc_j²;  Lc_j = z_j (1 − ss_j)^{1/2};  Jacobian ½ log(1 − ss_j) */
                Lb[j] += 2.0 * Lc[j] * ssbar[j + 1];
                ssbar[j] = ssbar[j + 1];
                const double w = sqrt(1.0 - ssb[j]);
                zb[j] = Lb[j] * w;
                if (j >= 1) {
                    ssbar[j] += -Lb[j] * z[j] / (2.0 * w) - 0.5 / (1.0 - ssb[j]);
                }
            }
            for (int j = 0; j < i; j++) gy[k + j] = zb[j] * (1.0 - z[j] * z[j]) - 2.0 * z[j];
            k += i;
        }
    } else {
        for (int i = 0; i < q; i++) {
            v = positive_logp(fd, L[i * q + i], pd[2 * i], pd[2 * i + 1], &dv);
            lp += v + x[k0 + i];
            grad[k0 + i] = L[i * q + i] * (GL[i * q + i] + dv) + 1.0;
        }
    }
    *lp_ = lp;
}

/* ------------------------------------------------------------------------ the whole density */

static void fill_eta_A(const agq_data *a, const double *beta, const double *L, double *eta0,
                       double *A) {
    const int q = a->q, p = a->p;
    for (long r = 0; r < a->n; r++) {
        double t = a->off[r];
        for (int l = 0; l < p; l++) t += a->X[r * p + l] * beta[l];
        eta0[r] = t;
        for (int k = 0; k < q; k++) { /* a = Lᵀz */
            double s = 0.0;
            for (int m = k; m < q; m++) s += L[m * q + k] * a->Z[r * q + m];
            A[r * q + k] = s;
        }
    }
}

static long max_school(const agq_data *a) {
    long mx = 1;
    for (long j = 0; j < a->J; j++) {
        const long nj = (long)a->starts[j + 1] - (long)a->starts[j];
        if (nj > mx) mx = nj;
    }
    return mx;
}

static int n_nodes(const agq_data *a) {
    int t = 1;
    for (int k = 0; k < a->q; k++) t *= a->K;
    return t;
}

/* school_agq with q and K constants (a copy of the data whose q and K the compiler sees), for
 * the default nodes per dimension (agq.default_agq_nodes: 7, 5, 3 for q = 1, 2, 3) */
#define SCHOOL_SPEC(NAME, Q, KK)                                                              \
    static double NAME(const agq_data *a0, long j, const double *L, const double *eta0,      \
                       const double *A, double *d, double *node, double *ex, double *gb,     \
                       double *gL, double *u_out, double *R_out) {                           \
        agq_data b = *a0;                                                                     \
        b.q = Q;                                                                              \
        b.K = KK;                                                                             \
        return school_agq(&b, j, L, eta0, A, d, node, ex, gb, gL, u_out, R_out);              \
    }
SCHOOL_SPEC(school_agq_q1k7, 1, 7)
SCHOOL_SPEC(school_agq_q2k5, 2, 5)
SCHOOL_SPEC(school_agq_q3k3, 3, 3)

static double school_agq_spec(const agq_data *a, long j, const double *L, const double *eta0,
                              const double *A, double *d, double *node, double *ex, double *gb,
                              double *gL, double *u_out, double *R_out) {
    if (a->q == 2 && a->K == 5)
        return school_agq_q2k5(a, j, L, eta0, A, d, node, ex, gb, gL, u_out, R_out);
    if (a->q == 1 && a->K == 7)
        return school_agq_q1k7(a, j, L, eta0, A, d, node, ex, gb, gL, u_out, R_out);
    if (a->q == 3 && a->K == 3)
        return school_agq_q3k3(a, j, L, eta0, A, d, node, ex, gb, gL, u_out, R_out);
    return school_agq(a, j, L, eta0, A, d, node, ex, gb, gL, u_out, R_out);
}

/* per-school Q_j into qj (J), and when gj is not NULL each school's gradient (p + q²) into gj;
 * schools split over the data's threads; 0 on success, −1 when memory ran out */
static int schools(const agq_data *a0, const double *beta, const double *L, double *qj,
                   double *gj, double *uj, double *Rj) {
    agq_data ad = *a0;
    z_in_x(&ad);
    const int q = ad.q, p = ad.p, G = p + q * q;
    const long T = n_nodes(&ad);
    double *eta0 = malloc(sizeof(double) * (ad.n * (1 + q) + T * (q + 1)));
    if (!eta0) return -1;
    double *A = eta0 + ad.n;
    node_table(&ad, A + ad.n * q);
    ad.tab = A + ad.n * q;
    const agq_data *a = &ad;
    fill_eta_A(a, beta, L, eta0, A);
    const long nmax = max_school(a);
    const long nodesz = (long)n_nodes(a) * (1 + p + 4 * q + 3 + p + q); /* + nodes_fast's */
    int fail = 0;
    int nt = a->nthreads > 0 ? a->nthreads : 1;
    if (nt > a->J) nt = (int)a->J;
#pragma omp parallel num_threads(nt) reduction(| : fail)
    {
        double *d = malloc(sizeof(double) * (3 * nmax + nodesz + nmax * (2 + q * a->K)));
        if (!d) {
            fail = 1;
        } else {
#pragma omp for schedule(static)
            for (long j = 0; j < a->J; j++) {
                double *g = gj ? gj + j * G : NULL;
                if (g) memset(g, 0, sizeof(double) * G);
                qj[j] = school_agq_spec(a, j, L, eta0, A, d, d + 3 * nmax, d + 3 * nmax + nodesz,
                                   g, g ? g + p : NULL,
                                   uj ? uj + j * q : NULL, Rj ? Rj + j * q * q : NULL);
            }
            free(d);
        }
    }
    free(eta0);
    return fail ? -1 : 0;
}

static double agq_logp_grad(const double *x, double *grad, const double *data, int *err) {
    const agq_data a = get_data(data);
    const int q = a.q, p = a.p, G = p + q * q;
    const int m = a.strct == 1 ? q : q * (q + 1) / 2;
    double L[QMAX * QMAX], GL[QMAX * QMAX] = {0};
    unpack_L(x, p, a.strct, q, L);
    double *qj = malloc(sizeof(double) * a.J * (1 + G));
    if (!qj) {
        *err = 1;
        return NAN;
    }
    double *gj = qj + a.J;
    if (schools(&a, x, L, qj, grad ? gj : NULL, NULL, NULL) != 0) {
        free(qj);
        *err = 1;
        return NAN;
    }
    double lp = 0.0;
    if (grad) memset(grad, 0, sizeof(double) * (p + m));
    for (long j = 0; j < a.J; j++) { /* in school order: the same sum for any thread count */
        lp += qj[j];
        if (grad) {
            const double *g = gj + j * G;
            for (int l = 0; l < p; l++) grad[l] += g[l];
            for (int k = 0; k < q * q; k++) GL[k] += g[p + k];
        }
    }
    free(qj);
    double lp_beta = 0.0, lp_cov = 0.0, dummy[QMAX * QMAX + 64];
    double *gr = grad ? grad : dummy;
    beta_prior(&lp_beta, x, gr, a.pb, p, (int)data[A_FBETA]);
    cov_prior(&lp_cov, x, gr, p, a.strct, data[A_ETA], (int)data[A_FSD], a.pd, q, L, GL);
    *err = 0;
    return data[A_CONST] + lp + lp_beta + lp_cov;
}

/* nutpie's logp callback: 0 on success, 3 / 4 for a non-finite gradient / density */
TL_EXPORT int64_t twolevel_logp_agq(uint64_t dim, const double *x, double *grad, double *logp, void *user) {
    int err;
    const double lp = agq_logp_grad(x, grad, (const double *)user, &err);
    *logp = lp;
    if (err) return 4;
    for (uint64_t i = 0; i < dim; i++)
        if (!isfinite(grad[i])) return 3;
    return isfinite(lp) ? 0 : 4;
}

/* nutpie's expand callback: the draw, then (when n_expanded leaves room for them) each school's
 * integrated log-likelihood Q_j; n_expanded = dim stores the draw only */
TL_EXPORT int64_t twolevel_expand_agq(uint64_t dim, uint64_t n_expanded, const double *x, double *out,
                            void *user) {
    const double *data = (const double *)user;
    const agq_data a = get_data(data);
    memcpy(out, x, sizeof(double) * dim);
    double L[QMAX * QMAX];
    unpack_L(x, a.p, a.strct, a.q, L);
    if (a.strct == SD_CPC) { /* the draw as the canonical x: packed L with log diagonal */
        int k = a.p;
        for (int i = 0; i < a.q; i++)
            for (int j = 0; j <= i; j++) out[k++] = i == j ? log(L[i * a.q + i]) : L[i * a.q + j];
    }
    if (n_expanded < dim + (uint64_t)a.J) return 0;
    if (schools(&a, x, L, out + dim, NULL, NULL, NULL) != 0) return 4;
    return 0;
}

/* per school at x: Q_j (J), optionally the per-school gradient in (β, L) (J × (p + q²)),
 * the modes û_j (J × q) and the factors R_j (J × q²); for tests and the draws */
TL_EXPORT int64_t twolevel_agq_schools(const double *x, const double *data, double *qj, double *gj,
                             double *uj, double *Rj) {
    const agq_data a = get_data(data);
    double L[QMAX * QMAX];
    unpack_L(x, a.p, a.strct, a.q, L);
    return schools(&a, x, L, qj, gj, uj, Rj);
}

/* ------------------------------------------------- draws of the school effects given (β, L) */

static inline uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline double unif(uint64_t *s) { return ((splitmix(s) >> 11) + 0.5) * 0x1.0p-53; }

static inline double gauss(uint64_t *s) {
    const double u1 = unif(s), u2 = unif(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586477 * u2);
}

/* For each of S draws xs (S × dim) and each school: m steps of an independence
 * Metropolis–Hastings chain on u_j targeting exp f(u) (the exact conditional posterior of the
 * school's effects given β, L), proposals û + S t with t multivariate Student-t (ν) and S the
 * Laplace scale, the chain started at a proposal. Writes u (S × J × q) and the acceptance
 * counts per draw (S). Draw s uses its own generator seeded (seed, s): any thread count gives
 * the same draws. */
TL_EXPORT int64_t twolevel_agq_draw(const double *xs, int64_t S, int64_t dim, const double *data,
                          uint64_t seed, int64_t m, double nu, int64_t nthreads, double *out_u,
                          double *accept) {
    const agq_data a = get_data(data);
    const int q = a.q, p = a.p;
    const long nmax = max_school(&a);
    int fail = 0;
#pragma omp parallel num_threads(nthreads > 0 ? (int)nthreads : 1) reduction(| : fail)
    {
        double *eta0 = malloc(sizeof(double) * (a.n * (1 + q) + 3 * nmax));
        if (!eta0) {
            fail = 1;
        } else {
            double *A = eta0 + a.n, *d = A + a.n * q;
#pragma omp for schedule(static)
            for (long s = 0; s < S; s++) {
                const double *x = xs + s * dim;
                double L[QMAX * QMAX];
                unpack_L(x, p, a.strct, q, L);
                fill_eta_A(&a, x, L, eta0, A);
                uint64_t st = seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(s + 1));
                splitmix(&st);
                long acc = 0;
                for (long j = 0; j < a.J; j++) {
                    const long lo = (long)a.starts[j], hi = (long)a.starts[j + 1];
                    double u[QMAX], R[QMAX * QMAX], Sm[QMAX * QMAX], cur[QMAX];
                    pass_out o;
                    double *uo = out_u + (s * a.J + j) * q;
                    if (!find_mode(&a, j, L, eta0, A, u, d, &o, R)) {
                        for (int k = 0; k < q; k++) uo[k] = NAN;
                        continue;
                    }
                    inv_t(q, R, Sm);
                    double lw_cur = -INFINITY;
                    for (long it = 0; it < m; it++) {
                        double z[QMAX], un[QMAX], chi = 0.0, zz = 0.0;
                        for (int k = 0; k < q; k++) {
                            z[k] = gauss(&st);
                            zz += z[k] * z[k];
                        }
                        /* χ²_ν as 2·Gamma(ν/2) for ν = 4: −2 log(U1 U2) */
                        if (nu == 4.0) {
                            chi = -2.0 * log(unif(&st) * unif(&st));
                        } else {
                            for (int k = 0; k < (int)nu; k++) {
                                const double g = gauss(&st);
                                chi += g * g;
                            }
                        }
                        const double sc = sqrt(nu / chi);
                        double t2 = 0.0;
                        for (int k = 0; k < q; k++) {
                            z[k] *= sc;
                            t2 += z[k] * z[k];
                        }
                        (void)zz;
                        for (int k = 0; k < q; k++) {
                            double t = u[k];
                            for (int l = k; l < q; l++) t += Sm[k * q + l] * z[l];
                            un[k] = t;
                        }
                        pass_out on;
                        pass_mode(&a, lo, hi, eta0, A, un, 0, NULL, &on);
                        /* log weight: f(u) − log t_ν(t) (constants dropped) */
                        const double lw = on.f + 0.5 * (nu + q) * log1p(t2 / nu);
                        if (it == 0 || log(unif(&st)) < lw - lw_cur) {
                            memcpy(cur, un, sizeof(double) * q);
                            if (it > 0) acc++;
                            lw_cur = lw;
                        }
                    }
                    memcpy(uo, cur, sizeof(double) * q);
                }
                accept[s] = (double)acc;
            }
            free(eta0);
        }
    }
    return fail ? -1 : 0;
}

#ifdef TWOLEVEL_PYINIT
/* setup.py builds this file as an extension module; the Windows linker wants its init symbol
 * exported. Never called: Python loads the library with ctypes (twolevel/models/native.py). */
TL_EXPORT void *TWOLEVEL_PYINIT(void) { return 0; }
#endif
