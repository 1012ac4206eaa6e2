/* glmer's PIRLS, the Laplace pieces and the adaptive Gauss-Hermite sum in C: the same maths, data
 * layout and loop as the numba kernels of twolevel/models/glmm/kernels.py (the reference; a test
 * checks the two agree), built with the package by setup.py (loaded by twolevel.models.glmm.cpirls).
 *
 * Why C beside numba: one PIRLS sweep is a pass over the rows computing, per row, mu(eta), the
 * working weight W_i, the working response and the unit deviance: an exp and a log per row.
 * numba evaluates those one row at a time (about 28 ns a row); here each block of CHUNK rows is
 * computed first in a loop the compiler vectorises (with glibc's libmvec for exp and log when
 * TWOLEVEL_MVEC is defined), then accumulated into the per-group cross-products.
 *
 * Layout (row-major, as NumPy's C order): X n x p, Z n x q, g n group indices in 0..J-1;
 * A J x q x q (lower triangle), cz J x q, B J x q x p, XtWX p x p (lower), XtWz p,
 * u J x q, Lfac J x q x q (lower factor of M_j = T'A_jT + I), RX p x p (lower).
 * Family codes: 0 binomial/logit, 1 binomial/probit, 2 binomial/cloglog, 3 poisson/log, and 4:
 * binomial/logit with every y_i 0 or 1 (one log a row instead of two), 5: the same with every
 * prior weight 1 (one log for eight rows, see logprod_dev).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(_WIN32)
#define TL_EXPORT __declspec(dllexport)
#else
#define TL_EXPORT __attribute__((visibility("default")))
#endif
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_max_threads(void) { return 1; }
static int omp_get_num_threads(void) { return 1; }
#endif

#ifdef TWOLEVEL_MVEC
/* glibc declares these vector variants only under -ffast-math; declaring them here lets the
 * compiler call libmvec's exp and log without fast-math's other assumptions (no NaN, no Inf). */
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double log(double);
#endif

#define EPS 2.220446049250313e-16
#define LOG_EPS -36.04365338911715 /* log(EPS) */
#define MAX_HALF 20
#define CHUNK 256
#define SQRT_2PI 2.5066282746310002
#define QMAX 16 /* at most 16 random effects and 64 fixed effects (cpirls.py checks) */
#define PMAX 64

enum { OK = 0, NAN_PDEV = 1, STEP_HALVING = 2, NOT_CONVERGED = 3, NOT_PD = 4 };
enum { F_JOINT = 1, F_WANT_RX = 2, F_REFRESH = 4, F_PRE = 8, F_NO_ETA = 16 };

typedef struct {
    int64_t n, J, q, p, fam;
    const double *y, *w, *X, *Z;
    const int64_t *g;
    int64_t sorted; /* 1 when g is non-decreasing (rows sorted by group) */
    const double *ly; /* poisson: log y_i (0 where y_i = 0), else NULL */
} GlmmData;

typedef struct { /* the cross-products of one sweep */
    double *A, *cz, *B, *XtWX, *XtWz;
} Cross;

#define INLINE static inline __attribute__((always_inline))
#define LY(d, i0) ((d)->ly ? (d)->ly + (i0) : NULL) /* log y from row i0, poisson only */

/* ---- per row: mu, W = mu'^2 w / V(mu), working response, unit deviance (numba's _family_row,
 * _unit_dev); d_i into dv when dv is not NULL; each returns sum_i d_i ----------------------- */

/* -2 sum_k log p_k (m <= CHUNK) with one log for eight rows: the products of eight p's are
 * taken first, eight rows apart so that eight products fill a vector. Each p_k is at least
 * EPS (lme4's clamps), so a product of eight is at least EPS^8 ~ 6e-126: no underflow. */
static double logprod_dev(const double *restrict p, int64_t m) {
    double s = 0.0;
    const int64_t m64 = m - m % 64;
    for (int64_t b = 0; b < m64; b += 64) {
        double pr[8];
        for (int l = 0; l < 8; l++) pr[l] = p[b + l];
        for (int r = 1; r < 8; r++)
            for (int l = 0; l < 8; l++) pr[l] *= p[b + 8 * r + l];
#pragma omp simd reduction(+ : s)
        for (int l = 0; l < 8; l++) s += log(pr[l]);
    }
#pragma omp simd reduction(+ : s)
    for (int64_t k = m64; k < m; k++) s += log(p[k]);
    return -2.0 * s;
}

/* One row of the vectorised families (fam: 0 logit, 3 log, 4 logit with 0/1 responses, 5 the
 * same with unit weights; a constant in each inlined copy): W = mu'(eta)^2 w / V(mu), the
 * working residual r = (y - mu) / mu'(eta) and the unit deviance d (fam 5: the probability of
 * y, whose logs logprod_dev takes eight at a time; fam 3 with lyk = log y), with lme4's
 * clamps. For the logit link
 * V(mu) = max(mu (1 - mu), EPS) equals mu' = max(m0 (1 - m0), EPS) for every eta (they differ
 * only where the clamps act, and there both are EPS), so W = w mu'. */
INLINE void fam_core(const int fam, double e, double yk, double wk, double lyk, double *W,
                     double *r, double *d) {
    if (fam == 3) { /* poisson / log: mu = max(exp(eta), EPS), no upper clamp, as lme4 */
        double mu = exp(e);
        mu = mu < EPS ? EPS : mu;
        /* y log(y / mu) = y (log y - log mu) with log mu = max(eta, log EPS): no log a row
         * (lyk = log y, taken once); mu = inf (eta > 709.78) keeps lme4's NaN deviance */
        double lm = e < LOG_EPS ? LOG_EPS : e;
        lm = mu == INFINITY ? INFINITY : lm;
        *W = wk * mu;
        *r = (yk - mu) / mu;
        double t = yk > 0.0 ? yk * (lyk - lm) : 0.0;
        *d = 2.0 * wk * (t - (yk - mu));
        return;
    }
    double m0 = 1.0 / (1.0 + exp(-e));
    double mu = m0 < EPS ? EPS : m0;
    mu = mu > 1.0 - EPS ? 1.0 - EPS : mu;
    double dmu = m0 * (1.0 - m0);
    dmu = dmu < EPS ? EPS : dmu;
    *W = wk * dmu;
    *r = (yk - mu) / dmu;
    if (fam == 5) { /* y 0 or 1, w 1: the probability of y, its log taken by logprod_dev */
        *d = yk > 0.5 ? mu : 1.0 - mu;
    } else if (fam == 4) { /* y 0 or 1: one log, d = -2 w log(y ? mu : 1 - mu) */
        *d = -2.0 * wk * log(yk > 0.5 ? mu : 1.0 - mu);
    } else {
        double t1 = yk > 0.0 ? yk * log(yk / mu) : 0.0;
        double t2 = yk < 1.0 ? (1.0 - yk) * log((1.0 - yk) / (1.0 - mu)) : 0.0;
        *d = 2.0 * wk * (t1 + t2);
    }
}

INLINE double rows_k(const int fam, int64_t m, const double *restrict eta,
                     const double *restrict off, const double *restrict y,
                     const double *restrict w, const double *restrict ly, double *restrict W,
                     double *restrict zr, double *restrict dv, const int store) {
    double dev = 0.0, sb[CHUNK];
#pragma omp simd reduction(+ : dev)
    for (int64_t k = 0; k < m; k++) {
        double Wk, r, di;
        fam_core(fam, eta[k], y[k], w[k], fam == 3 ? ly[k] : 0.0, &Wk, &r, &di);
        W[k] = Wk;
        zr[k] = eta[k] - off[k] + r;
        if (store) dv[k] = di;
        if (fam == 5) sb[k] = di;
        else dev += di;
    }
    return fam == 5 ? logprod_dev(sb, m) : dev;
}

/* rows_k with eta made in the same loop, for q = 2, with v = (v0, v1) on two columns V:
 * u-only mode with beta on Z's columns (V = Z, v = shift): oc_i = o_i + z_i'shift (the offset
 * with x_i'beta), eta_i = oc_i + z_i'(T u)_g[i], the working response eta_i - oc_i + r_i;
 * joint mode with p = 2 (V = X, v = beta): eta_i = o_i + x_i'beta + z_i'(T u)_g[i], the working
 * response eta_i - o_i + r_i. eta into et when keep. */
INLINE double rows_fused_q2_k(const int fam, const GlmmData *d, int64_t i0, int64_t m,
                              const double *restrict o, const double *restrict v,
                              const double *restrict bT, double *restrict et,
                              double *restrict W, double *restrict zr, const int keep,
                              const int joint) {
    const double *restrict Z = d->Z, *restrict V = joint ? d->X : d->Z;
    const double *restrict y = d->y + i0, *restrict w = d->w + i0;
    const double *restrict ly = d->ly ? d->ly + i0 : NULL;
    const int64_t *restrict g = d->g + i0;
    const double v0 = v[0], v1 = v[1];
    double dev = 0.0, sb[CHUNK];
#pragma omp simd reduction(+ : dev)
    for (int64_t k = 0; k < m; k++) {
        const int64_t i = i0 + k, j = g[k];
        double xb = 0.0, lin = 0.0;
        xb += V[2 * i] * v0;
        xb += V[2 * i + 1] * v1;
        lin += Z[2 * i] * bT[2 * j];
        lin += Z[2 * i + 1] * bT[2 * j + 1];
        const double oc = o[i] + xb, e = oc + lin;
        if (keep) et[k] = e;
        double Wk, r, di;
        fam_core(fam, e, y[k], w[k], fam == 3 ? ly[k] : 0.0, &Wk, &r, &di);
        W[k] = Wk;
        zr[k] = e - (joint ? o[i] : oc) + r;
        if (fam == 5) sb[k] = di;
        else dev += di;
    }
    return fam == 5 ? logprod_dev(sb, m) : dev;
}

static double rows_fused_q2(const GlmmData *d, int64_t i0, int64_t m, const double *o,
                            const double *v, const double *bT, double *et, double *W,
                            double *zr, int joint) {
#define RF(F, J) (et ? rows_fused_q2_k(F, d, i0, m, o, v, bT, et, W, zr, 1, J)                 \
                     : rows_fused_q2_k(F, d, i0, m, o, v, bT, NULL, W, zr, 0, J))
#define BY_MODE(F) (joint ? RF(F, 1) : RF(F, 0))
    switch (d->fam) {
    case 0:
        return BY_MODE(0);
    case 3:
        return BY_MODE(3);
    case 4:
        return BY_MODE(4);
    default:
        return BY_MODE(5);
    }
#undef BY_MODE
#undef RF
}

static double rows_other(int64_t fam, int64_t m, const double *eta, const double *off,
                         const double *y, const double *w, double *W, double *zr, double *dv) {
    double dev = 0.0;
    for (int64_t k = 0; k < m; k++) {
        double e = eta[k], yk = y[k], wk = w[k], mu, dmu;
        if (fam == 1) { /* probit: no lower clamp on mu, as lme4 */
            mu = fmin(0.5 * erfc(-e / sqrt(2.0)), 1.0 - EPS);
            dmu = exp(-0.5 * e * e) / SQRT_2PI;
        } else { /* cloglog */
            double ee = exp(fmin(e, 700.0));
            mu = fmin(fmax(-expm1(-ee), EPS), 1.0 - EPS);
            dmu = fmax(ee * exp(-ee), EPS);
        }
        double V = fmax(mu * (1.0 - mu), EPS);
        W[k] = dmu * dmu * wk / V;
        zr[k] = e - off[k] + (yk - mu) / dmu;
        double t = yk > 0.0 ? yk * log(yk / mu) : 0.0;
        if (yk < 1.0) t += (1.0 - yk) * log((1.0 - yk) / (1.0 - mu));
        double di = 2.0 * wk * t;
        if (dv) dv[k] = di;
        dev += di;
    }
    return dev;
}

/* per row W_i, the working response and d_i (into W, zr and, unless NULL, dv); returns
 * sum_i d_i; ly: log y for the poisson family (else unused) */
static double rows(int64_t fam, int64_t m, const double *eta, const double *off, const double *y,
                   const double *w, const double *ly, double *W, double *zr, double *dv) {
    switch (fam) {
    case 0:
        return dv ? rows_k(0, m, eta, off, y, w, ly, W, zr, dv, 1)
                  : rows_k(0, m, eta, off, y, w, ly, W, zr, NULL, 0);
    case 3:
        return dv ? rows_k(3, m, eta, off, y, w, ly, W, zr, dv, 1)
                  : rows_k(3, m, eta, off, y, w, ly, W, zr, NULL, 0);
    case 4:
        return dv ? rows_k(4, m, eta, off, y, w, ly, W, zr, dv, 1)
                  : rows_k(4, m, eta, off, y, w, ly, W, zr, NULL, 0);
    case 5: /* per-row deviances wanted (AGQ): fam 4's one log a row (w is 1) */
        return dv ? rows_k(4, m, eta, off, y, w, ly, W, zr, dv, 1)
                  : rows_k(5, m, eta, off, y, w, ly, W, zr, NULL, 0);
    default:
        return rows_other(fam, m, eta, off, y, w, W, zr, dv);
    }
}

/* ---- accumulation of the cross-products -------------------------------------------------- */

static void zero_cross(const GlmmData *d, Cross *c, int with_x) {
    int64_t J = d->J, q = d->q, p = d->p;
    memset(c->A, 0, sizeof(double) * J * q * q);
    memset(c->cz, 0, sizeof(double) * J * q);
    if (with_x) {
        memset(c->B, 0, sizeof(double) * J * q * p);
        memset(c->XtWX, 0, sizeof(double) * p * p);
        memset(c->XtWz, 0, sizeof(double) * p);
    }
}

/* rows i0 .. i0+m-1 with weights W and working responses zr: A_j += W z z', c_j += W z zr (and
 * B_j += W z x', XtWX += W x x', XtWz += W x zr with X). q and p are constants in each inlined
 * copy, so the small loops unroll. A run of rows of one group (data sorted by group) is summed
 * in local variables and added to the group's sums once, at the end of the run. */
INLINE void acc_rows_k(const GlmmData *d, int64_t i0, int64_t m, const double *W,
                       const double *zr, Cross *c, const int with_x, const int64_t q,
                       const int64_t p) {
    const double *Z = d->Z, *X = d->X;
    const int64_t *g = d->g;
    double sA[q * q], sc[q], sB[q * p], sX[p * p], sXz[p]; /* small: q, p constants */
    for (int64_t a = 0; a < q; a++) {
        sc[a] = 0.0;
        for (int64_t b = 0; b <= a; b++) sA[a * q + b] = 0.0;
        if (with_x)
            for (int64_t cc = 0; cc < p; cc++) sB[a * p + cc] = 0.0;
    }
    if (with_x)
        for (int64_t cc = 0; cc < p; cc++) {
            sXz[cc] = 0.0;
            for (int64_t dd = 0; dd <= cc; dd++) sX[cc * p + dd] = 0.0;
        }
    int64_t jcur = m > 0 ? g[i0] : 0;
    for (int64_t k = 0; k <= m; k++) {
        const int64_t i = i0 + k, j = k < m ? g[i] : -1;
        if (j != jcur) { /* the end of a run: add it to group jcur */
            double *A = c->A + jcur * q * q, *cz = c->cz + jcur * q, *B = c->B + jcur * q * p;
            for (int64_t a = 0; a < q; a++) {
                cz[a] += sc[a];
                sc[a] = 0.0;
                for (int64_t b = 0; b <= a; b++) {
                    A[a * q + b] += sA[a * q + b];
                    sA[a * q + b] = 0.0;
                }
                if (with_x)
                    for (int64_t cc = 0; cc < p; cc++) {
                        B[a * p + cc] += sB[a * p + cc];
                        sB[a * p + cc] = 0.0;
                    }
            }
            if (k == m) break;
            jcur = j;
        }
        const double Wi = W[k], zi = zr[k];
        const double *zrow = Z + i * q, *xrow = X + i * p;
        for (int64_t a = 0; a < q; a++) {
            const double za = zrow[a] * Wi;
            sc[a] += za * zi;
            for (int64_t b = 0; b <= a; b++) sA[a * q + b] += za * zrow[b];
            if (with_x)
                for (int64_t cc = 0; cc < p; cc++) sB[a * p + cc] += za * xrow[cc];
        }
        if (with_x)
            for (int64_t cc = 0; cc < p; cc++) {
                const double xc = xrow[cc] * Wi;
                sXz[cc] += xc * zi;
                for (int64_t dd = 0; dd <= cc; dd++) sX[cc * p + dd] += xc * xrow[dd];
            }
    }
    if (with_x)
        for (int64_t cc = 0; cc < p; cc++) {
            c->XtWz[cc] += sXz[cc];
            for (int64_t dd = 0; dd <= cc; dd++) c->XtWX[cc * p + dd] += sX[cc * p + dd];
        }
}

/* q = 2 without X (stage 2), or q = p = 2 with X (stage 1, the joint mode): the sums of a
 * run of rows of one group (A_j, c_j and, with X, B_j) and those of the block (X'WX, X'Wz) in
 * local variables, added to the group's once at the end of the run */
INLINE void acc_rows_q2_k(const GlmmData *d, int64_t i0, int64_t m, const double *W,
                          const double *zr, Cross *c, const int with_x) {
    const double *Z = d->Z, *X = d->X;
    const int64_t *g = d->g;
    double s00 = 0.0, s10 = 0.0, s11 = 0.0, c0 = 0.0, c1 = 0.0;
    double b00 = 0.0, b01 = 0.0, b10 = 0.0, b11 = 0.0;
    double x00 = 0.0, x10 = 0.0, x11 = 0.0, xz0 = 0.0, xz1 = 0.0;
    int64_t jcur = m > 0 ? g[i0] : 0;
    for (int64_t k = 0; k <= m; k++) {
        const int64_t i = i0 + k, j = k < m ? g[i] : -1;
        if (j != jcur) {
            double *A = c->A + 4 * jcur, *cz = c->cz + 2 * jcur;
            cz[0] += c0;
            A[0] += s00;
            cz[1] += c1;
            A[2] += s10;
            A[3] += s11;
            s00 = s10 = s11 = c0 = c1 = 0.0;
            if (with_x) {
                double *B = c->B + 4 * jcur;
                B[0] += b00;
                B[1] += b01;
                B[2] += b10;
                B[3] += b11;
                b00 = b01 = b10 = b11 = 0.0;
            }
            if (k == m) break;
            jcur = j;
        }
        const double z0 = Z[2 * i], z1 = Z[2 * i + 1], Wi = W[k], zi = zr[k];
        double za = z0 * Wi, zb = z1 * Wi;
        c0 += za * zi;
        s00 += za * z0;
        c1 += zb * zi;
        s10 += zb * z0;
        s11 += zb * z1;
        if (with_x) {
            const double xa = X[2 * i], xb = X[2 * i + 1];
            b00 += za * xa;
            b01 += za * xb;
            b10 += zb * xa;
            b11 += zb * xb;
            double xc = xa * Wi;
            xz0 += xc * zi;
            x00 += xc * xa;
            xc = xb * Wi;
            xz1 += xc * zi;
            x10 += xc * xa;
            x11 += xc * xb;
        }
    }
    if (with_x) {
        c->XtWz[0] += xz0;
        c->XtWX[0] += x00;
        c->XtWz[1] += xz1;
        c->XtWX[2] += x10;
        c->XtWX[3] += x11;
    }
}

static void accumulate_rows(const GlmmData *d, int64_t i0, int64_t m, const double *W,
                            const double *zr, Cross *c, int with_x) {
    const int64_t q = d->q, p = d->p;
    if (!with_x) {
        if (q == 2) acc_rows_q2_k(d, i0, m, W, zr, c, 0);
        else if (q == 1) acc_rows_k(d, i0, m, W, zr, c, 0, 1, p);
        else acc_rows_k(d, i0, m, W, zr, c, 0, q, p);
    } else {
        if (q == 2 && p == 2) acc_rows_q2_k(d, i0, m, W, zr, c, 1);
        else if (q == 2) acc_rows_k(d, i0, m, W, zr, c, 1, 2, p);
        else if (q == 1) acc_rows_k(d, i0, m, W, zr, c, 1, 1, p);
        else acc_rows_k(d, i0, m, W, zr, c, 1, q, p);
    }
}

/* the cross-products at the given eta (numba's _accumulate) */
static void accumulate(const GlmmData *d, const double *off, const double *eta, Cross *c,
                       int with_x) {
    double W[CHUNK], zr[CHUNK];
    zero_cross(d, c, with_x);
    for (int64_t i0 = 0; i0 < d->n; i0 += CHUNK) {
        int64_t m = d->n - i0 < CHUNK ? d->n - i0 : CHUNK;
        rows(d->fam, m, eta + i0, off + i0, d->y + i0, d->w + i0, LY(d, i0), W, zr, NULL);
        accumulate_rows(d, i0, m, W, zr, c, with_x);
    }
}

/* ---- small dense algebra (numba's _chol, _fwd, _bwd) ------------------------------------- */

INLINE int chol(double *M, int64_t k) { /* in place, lower; 0 if not positive definite */
    for (int64_t i = 0; i < k; i++) {
        for (int64_t c = 0; c <= i; c++) {
            double s = M[i * k + c];
            for (int64_t m = 0; m < c; m++) s -= M[i * k + m] * M[c * k + m];
            if (i == c) {
                if (!(s > 0.0) || !isfinite(s)) return 0;
                M[i * k + i] = sqrt(s);
            } else {
                M[i * k + c] = s / M[c * k + c];
            }
        }
        for (int64_t c = i + 1; c < k; c++) M[i * k + c] = 0.0;
    }
    return 1;
}

INLINE void fwd(const double *L, double *b, int64_t k) {
    for (int64_t i = 0; i < k; i++) {
        double s = b[i];
        for (int64_t m = 0; m < i; m++) s -= L[i * k + m] * b[m];
        b[i] = s / L[i * k + i];
    }
}

INLINE void bwd(const double *L, double *b, int64_t k) {
    for (int64_t i = k - 1; i >= 0; i--) {
        double s = b[i];
        for (int64_t m = i + 1; m < k; m++) s -= L[m * k + i] * b[m];
        b[i] = s / L[i * k + i];
    }
}

/* ---- one factorisation (numba's _factor) ------------------------------------------------- */

/* Per group M_j = T'A_jT + I = L_jL_j' (into Lfac), log det. u-only mode: u_j = M_j^-1 T'c_j.
 * With X: R_j = L_j^-1 T'B_j, RX'RX = XtWX - sum_j R_j'R_j; joint mode: beta = (RX'RX)^-1
 * (XtWz - sum_j R_j' L_j^-1 T'c_j), u_j = L_j^-T (L_j^-1 T'c_j - R_j beta). The groups are split
 * between nt threads; each thread's sums over its groups (in part: nt x (p*p + p)) are added in
 * thread order, so the result does not depend on timing. */
INLINE int factor_k(const GlmmData *d, const double *T, Cross *c, double *Lfac, double *RX,
                    int with_x, int joint, double *u, double *beta, double *ldL2_out,
                    double *restrict dprod, double *part, int nt, const int64_t q,
                    const int64_t p) {
    const int64_t J = d->J;
    int bad = 0;
    memset(part, 0, sizeof(double) * nt * (p * p + p));
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : bad)
    {
        double M[q * q], AT[q * q], tc[q], R[q * p]; /* small: q, p constants */
        double *RXt = part + omp_get_thread_num() * (p * p + p), *Wt = RXt + p * p;
#pragma omp for schedule(static)
        for (int64_t j = 0; j < J; j++) {
            const double *Aj = c->A + j * q * q;
            for (int64_t a = 0; a < q; a++)
                for (int64_t cc = 0; cc < q; cc++) {
                    double s = 0.0;
                    for (int64_t b = 0; b < q; b++)
                        s += (b <= a ? Aj[a * q + b] : Aj[b * q + a]) * T[b * q + cc];
                    AT[a * q + cc] = s;
                }
            for (int64_t a = 0; a < q; a++)
                for (int64_t cc = 0; cc < q; cc++) {
                    double s = a == cc ? 1.0 : 0.0;
                    for (int64_t b = 0; b < q; b++) s += T[b * q + a] * AT[b * q + cc];
                    M[a * q + cc] = s;
                }
            if (!chol(M, q)) {
                bad = 1;
                dprod[j] = 1.0;
                continue;
            }
            double *Lj = Lfac + j * q * q;
            for (int64_t a = 0; a < q * q; a++) Lj[a] = M[a];
            double pr = M[0];
            for (int64_t a = 1; a < q; a++) pr *= M[a * q + a];
            dprod[j] = pr; /* the logs are taken together below, in vector form */
            for (int64_t a = 0; a < q; a++) {
                double s = 0.0;
                for (int64_t b = 0; b < q; b++) s += T[b * q + a] * c->cz[j * q + b];
                tc[a] = s;
            }
            fwd(M, tc, q);
            if (with_x) {
                const double *Bj = c->B + j * q * p;
                for (int64_t cc = 0; cc < p; cc++) {
                    for (int64_t a = 0; a < q; a++) {
                        double s = 0.0;
                        for (int64_t b = 0; b < q; b++) s += T[b * q + a] * Bj[b * p + cc];
                        R[a * p + cc] = s;
                    }
                    for (int64_t a = 0; a < q; a++) {
                        double s = R[a * p + cc];
                        for (int64_t m = 0; m < a; m++) s -= M[a * q + m] * R[m * p + cc];
                        R[a * p + cc] = s / M[a * q + a];
                    }
                }
                for (int64_t cc = 0; cc < p; cc++) {
                    for (int64_t dd = 0; dd <= cc; dd++) {
                        double s = 0.0;
                        for (int64_t a = 0; a < q; a++) s += R[a * p + cc] * R[a * p + dd];
                        RXt[cc * p + dd] += s;
                    }
                    if (joint) {
                        double s = 0.0;
                        for (int64_t a = 0; a < q; a++) s += R[a * p + cc] * tc[a];
                        Wt[cc] += s;
                    }
                }
                if (joint)
                    for (int64_t a = 0; a < q; a++) {
                        c->cz[j * q + a] = tc[a];
                        for (int64_t cc = 0; cc < p; cc++)
                            c->B[(j * q + a) * p + cc] = R[a * p + cc];
                    }
            }
            if (!joint) {
                bwd(M, tc, q);
                for (int64_t a = 0; a < q; a++) u[j * q + a] = tc[a];
            }
        }
    }
    if (bad) return 0;
    double ldL2 = 0.0;
#pragma omp simd reduction(+ : ldL2)
    for (int64_t j = 0; j < J; j++) ldL2 += 2.0 * log(dprod[j]);
    if (with_x) {
        for (int64_t a = 0; a < p; a++)
            for (int64_t b = 0; b <= a; b++) {
                double s = 0.0;
                for (int t = 0; t < nt; t++) s += part[t * (p * p + p) + a * p + b];
                RX[a * p + b] = c->XtWX[a * p + b] - s;
            }
        if (joint)
            for (int64_t a = 0; a < p; a++) {
                double s = 0.0;
                for (int t = 0; t < nt; t++) s += part[t * (p * p + p) + p * p + a];
                c->XtWz[a] -= s;
            }
        if (!chol(RX, p) && joint) return 0;
    }
    if (joint) {
        for (int64_t cc = 0; cc < p; cc++) beta[cc] = c->XtWz[cc];
        fwd(RX, beta, p);
        bwd(RX, beta, p);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t j = 0; j < J; j++) {
            double tc[QMAX];
            for (int64_t a = 0; a < q; a++) {
                double s = c->cz[j * q + a];
                for (int64_t cc = 0; cc < p; cc++) s -= c->B[(j * q + a) * p + cc] * beta[cc];
                tc[a] = s;
            }
            bwd(Lfac + j * q * q, tc, q);
            for (int64_t a = 0; a < q; a++) u[j * q + a] = tc[a];
        }
    }
    *ldL2_out = ldL2;
    return 1;
}

/* One group's 2 x 2 step (q = 2): M = T'AT + I from A = [a00, ., a10, a11] (lower), its
 * Cholesky factor L = [l00, 0; l10, l11] (into Lj, l00 l11 into *dprod), the reciprocals
 * r0 = 1/l00, r1 = 1/l11 and v = L^-1 T'c; returns 1 when M is not positive definite. */
INLINE int chol2_group(const double *Aj, const double *cj, double t00, double t01, double t10,
                       double t11, double *Lj, double *dprod, double *r0, double *r1,
                       double *l10, double *v0, double *v1) {
    const double a00 = Aj[0], a10 = Aj[2], a11 = Aj[3];
    const double at00 = a00 * t00 + a10 * t10, at01 = a00 * t01 + a10 * t11; /* A T */
    const double at10 = a10 * t00 + a11 * t10, at11 = a10 * t01 + a11 * t11;
    const double m00 = 1.0 + (t00 * at00 + t10 * at10);
    const double m10 = t01 * at00 + t11 * at10;
    const double m11 = 1.0 + (t01 * at01 + t11 * at11);
    const double l00 = sqrt(m00);
    *r0 = 1.0 / l00;
    *l10 = m10 * *r0;
    const double s11 = m11 - *l10 * *l10;
    const double l11 = sqrt(s11);
    *r1 = 1.0 / l11;
    Lj[0] = l00;
    Lj[1] = 0.0;
    Lj[2] = *l10;
    Lj[3] = l11;
    *dprod = l00 * l11;
    *v0 = (t00 * cj[0] + t10 * cj[1]) * *r0;
    *v1 = ((t01 * cj[0] + t11 * cj[1]) - *l10 * *v0) * *r1;
    return !(m00 > 0.0) || !(s11 > 0.0) || !(fabs(m00) < INFINITY) || !(fabs(s11) < INFINITY);
}

/* q = 2, u-only mode (stage 2): the same algebra as factor_k written elementwise over the
 * groups (two divisions and two square roots a group), in a loop the compiler vectorises.
 * A_j = [a00, ., a10, a11] (lower), T = [t00, t01; t10, t11], c_j = (c0, c1). */
static int factor_q2_u(const GlmmData *d, const double *T, const Cross *c, double *Lfac,
                       double *u, double *ldL2_out, double *restrict dprod, int nt) {
    const int64_t J = d->J;
    const double t00 = T[0], t01 = T[1], t10 = T[2], t11 = T[3];
    const double *restrict A = c->A, *restrict cz = c->cz;
    double *restrict L = Lfac, *restrict uu = u;
    int bad = 0;
#pragma omp parallel for simd schedule(static) num_threads(nt) if (nt > 1) reduction(| : bad)
    for (int64_t j = 0; j < J; j++) {
        double r0, r1, l10, v0, v1;
        bad |= chol2_group(A + 4 * j, cz + 2 * j, t00, t01, t10, t11, L + 4 * j, dprod + j, &r0,
                           &r1, &l10, &v0, &v1);
        const double w1 = v1 * r1;
        uu[2 * j + 1] = w1;
        uu[2 * j] = (v0 - l10 * w1) * r0;
    }
    if (bad) return 0;
    double ldL2 = 0.0;
#pragma omp simd reduction(+ : ldL2)
    for (int64_t j = 0; j < J; j++) ldL2 += 2.0 * log(dprod[j]);
    *ldL2_out = ldL2;
    return 1;
}

/* q = 2, p = 2 with X (stage 1, the joint mode; and the RX of a final u-only state): the same
 * algebra as factor_k written elementwise over the groups, in a loop the compiler vectorises;
 * each thread's sums over its groups (R_j'R_j and R_j' L_j^-1 T'c_j) are added in thread
 * order. B_j = [b00 b01; b10 b11] (rows: Z's columns, columns: X's). */
static int factor_q2p2_x(const GlmmData *d, const double *T, Cross *c, double *Lfac,
                         double *RX, int joint, double *u, double *beta, double *ldL2_out,
                         double *restrict dprod, double *part, int nt) {
    const int64_t J = d->J;
    const double t00 = T[0], t01 = T[1], t10 = T[2], t11 = T[3];
    double *restrict A = c->A, *restrict cz = c->cz, *restrict B = c->B;
    double *restrict L = Lfac, *restrict uu = u;
    int bad = 0;
    memset(part, 0, sizeof(double) * nt * 6);
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : bad)
    {
        const int t = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t jlo = J * t / nth, jhi = J * (t + 1) / nth;
        double r00 = 0.0, r10 = 0.0, r11 = 0.0, w0 = 0.0, w1 = 0.0;
        int b = 0;
#pragma omp simd reduction(+ : r00, r10, r11, w0, w1) reduction(| : b)
        for (int64_t j = jlo; j < jhi; j++) {
            double r0, r1, l10, v0, v1;
            b |= chol2_group(A + 4 * j, cz + 2 * j, t00, t01, t10, t11, L + 4 * j, dprod + j,
                             &r0, &r1, &l10, &v0, &v1);
            const double b00 = B[4 * j], b01 = B[4 * j + 1], b10 = B[4 * j + 2], b11 = B[4 * j + 3];
            const double p00 = (t00 * b00 + t10 * b10) * r0; /* R = L^-1 T'B, column 0 */
            const double p10 = ((t01 * b00 + t11 * b10) - l10 * p00) * r1;
            const double p01 = (t00 * b01 + t10 * b11) * r0; /* column 1 */
            const double p11 = ((t01 * b01 + t11 * b11) - l10 * p01) * r1;
            r00 += p00 * p00 + p10 * p10;
            r10 += p01 * p00 + p11 * p10;
            r11 += p01 * p01 + p11 * p11;
            if (joint) {
                w0 += p00 * v0 + p10 * v1;
                w1 += p01 * v0 + p11 * v1;
                cz[2 * j] = v0;
                cz[2 * j + 1] = v1;
                B[4 * j] = p00;
                B[4 * j + 1] = p01;
                B[4 * j + 2] = p10;
                B[4 * j + 3] = p11;
            } else {
                const double u1 = v1 * r1;
                uu[2 * j + 1] = u1;
                uu[2 * j] = (v0 - l10 * u1) * r0;
            }
        }
        double *pt = part + 6 * t;
        pt[0] = r00;
        pt[1] = r10;
        pt[2] = r11;
        pt[3] = w0;
        pt[4] = w1;
        bad |= b;
    }
    if (bad) return 0;
    double ldL2 = 0.0;
#pragma omp simd reduction(+ : ldL2)
    for (int64_t j = 0; j < J; j++) ldL2 += 2.0 * log(dprod[j]);
    double s[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < 5; k++) s[k] += part[6 * t + k];
    RX[0] = c->XtWX[0] - s[0];
    RX[2] = c->XtWX[2] - s[1];
    RX[3] = c->XtWX[3] - s[2];
    if (joint) {
        c->XtWz[0] -= s[3];
        c->XtWz[1] -= s[4];
    }
    if (!chol(RX, 2) && joint) return 0;
    if (joint) {
        beta[0] = c->XtWz[0];
        beta[1] = c->XtWz[1];
        fwd(RX, beta, 2);
        bwd(RX, beta, 2);
        const double be0 = beta[0], be1 = beta[1];
#pragma omp parallel for simd schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t j = 0; j < J; j++) {
            const double x0 = cz[2 * j] - (B[4 * j] * be0 + B[4 * j + 1] * be1);
            const double x1 = cz[2 * j + 1] - (B[4 * j + 2] * be0 + B[4 * j + 3] * be1);
            const double l00 = L[4 * j], l10 = L[4 * j + 2], l11 = L[4 * j + 3];
            const double u1 = x1 / l11;
            uu[2 * j + 1] = u1;
            uu[2 * j] = (x0 - l10 * u1) / l00;
        }
    }
    *ldL2_out = ldL2;
    return 1;
}

/* log det L = sum_j log prod diag L_j (one log a group, taken in vector form) */
static int factor(const GlmmData *d, const double *T, Cross *c, double *Lfac, double *RX,
                  int with_x, int joint, double *u, double *beta, double *ldL2_out,
                  double *dprod, double *part, int nt) {
    const int64_t q = d->q, p = d->p;
#define FARGS d, T, c, Lfac, RX, with_x, joint, u, beta, ldL2_out, dprod, part, nt
    if (q == 2 && !with_x) return factor_q2_u(d, T, c, Lfac, u, ldL2_out, dprod, nt);
    if (q == 2 && p == 2) return factor_q2p2_x(d, T, c, Lfac, RX, joint, u, beta, ldL2_out, dprod,
                                               part, nt);
    if (q == 2) return factor_k(FARGS, 2, p);
    if (q == 1) return factor_k(FARGS, 1, p);
    return factor_k(FARGS, q, p);
#undef FARGS
}

/* ---- one sweep (numba's _sweep): eta, the deviance, next iteration's cross-products ------- */

/* eta_i = o_i (+ x_i'beta when joint) + z_i'(T u_j) for rows i0 .. i0+m-1, into et */
INLINE void eta_rows_k(const GlmmData *d, int64_t i0, int64_t m, const double *off,
                       const double *beta, const double *bT, double *restrict et,
                       const int joint, const int64_t q, const int64_t p) {
    const double *X = d->X, *Z = d->Z;
    const int64_t *g = d->g;
    for (int64_t k = 0; k < m; k++) {
        int64_t i = i0 + k;
        double e = off[i];
        if (joint)
            for (int64_t cc = 0; cc < p; cc++) e += X[i * p + cc] * beta[cc];
        const double *b = bT + q * g[i];
        double lin = 0.0;
        for (int64_t a = 0; a < q; a++) lin += Z[i * q + a] * b[a];
        et[k] = e + lin;
    }
}

/* u-only mode with X's columns among Z's (shift = beta placed on Z's columns): the offset
 * o_i + x_i'beta = o_i + z_i'shift is made here, per block (offc), instead of in a pass of its
 * own; eta_i = offc_i + z_i'(T u_j) */
INLINE void eta_rows_shift_k(const GlmmData *d, int64_t i0, int64_t m, const double *o,
                             const double *shift, const double *bT, double *restrict et,
                             double *restrict offc, const int64_t q) {
    const double *Z = d->Z;
    const int64_t *g = d->g;
    for (int64_t k = 0; k < m; k++) {
        int64_t i = i0 + k;
        double xb = 0.0, lin = 0.0;
        const double *b = bT + q * g[i];
        for (int64_t a = 0; a < q; a++) xb += Z[i * q + a] * shift[a];
        for (int64_t a = 0; a < q; a++) lin += Z[i * q + a] * b[a];
        offc[k] = o[i] + xb;
        et[k] = offc[k] + lin;
    }
}

static void eta_rows_shift(const GlmmData *d, int64_t i0, int64_t m, const double *o,
                           const double *shift, const double *bT, double *et, double *offc) {
    const int64_t q = d->q;
    if (q == 2) eta_rows_shift_k(d, i0, m, o, shift, bT, et, offc, 2);
    else if (q == 1) eta_rows_shift_k(d, i0, m, o, shift, bT, et, offc, 1);
    else eta_rows_shift_k(d, i0, m, o, shift, bT, et, offc, q);
}

static void eta_rows(const GlmmData *d, int64_t i0, int64_t m, const double *off,
                     const double *beta, const double *bT, double *et, int joint) {
    const int64_t q = d->q, p = d->p;
    if (!joint) {
        if (q == 2) eta_rows_k(d, i0, m, off, beta, bT, et, 0, 2, p);
        else if (q == 1) eta_rows_k(d, i0, m, off, beta, bT, et, 0, 1, p);
        else eta_rows_k(d, i0, m, off, beta, bT, et, 0, q, p);
    } else {
        if (q == 2 && p == 2) eta_rows_k(d, i0, m, off, beta, bT, et, 1, 2, 2);
        else if (q == 2) eta_rows_k(d, i0, m, off, beta, bT, et, 1, 2, p);
        else if (q == 1) eta_rows_k(d, i0, m, off, beta, bT, et, 1, 1, p);
        else eta_rows_k(d, i0, m, off, beta, bT, et, 1, q, p);
    }
}

/* the first row of the group that row r is in (rows sorted by group), or r at the ends */
static int64_t group_start(const GlmmData *d, int64_t r) {
    if (r <= 0 || r >= d->n) return r <= 0 ? 0 : d->n;
    while (r > 0 && d->g[r - 1] == d->g[r]) r--;
    return r;
}

/* rows lo .. hi-1 of a sweep, block by block: eta, the row values, the sums into ct; returns
 * sum_i d_i */
static double sweep_rows(const GlmmData *d, int64_t lo, int64_t hi, const double *off,
                         const double *beta, const double *shift, const double *bT, int joint,
                         double *eta, Cross *ct, int with_x) {
    const int vec = d->fam == 0 || d->fam >= 3; /* the families of fam_core */
    const int fused = shift && d->q == 2 && vec;            /* u-only, beta on Z's columns */
    const int fused_joint = joint && d->q == 2 && d->p == 2 && vec;
    double W[CHUNK], zr[CHUNK], eb[CHUNK], offc[CHUNK], dev = 0.0;
    for (int64_t i0 = lo; i0 < hi; i0 += CHUNK) {
        const int64_t m = hi - i0 < CHUNK ? hi - i0 : CHUNK;
        double *et = eta ? eta + i0 : eb;
        const double *ob = off + i0;
        if (fused || fused_joint) {
            dev += rows_fused_q2(d, i0, m, off, fused ? shift : beta, bT, eta ? et : NULL, W, zr,
                                 !fused);
        } else {
            if (shift) {
                eta_rows_shift(d, i0, m, off, shift, bT, et, offc);
                ob = offc;
            } else {
                eta_rows(d, i0, m, off, beta, bT, et, joint);
            }
            dev += rows(d->fam, m, et, ob, d->y + i0, d->w + i0, LY(d, i0), W, zr, NULL);
        }
        accumulate_rows(d, i0, m, W, zr, ct, with_x);
    }
    return dev;
}

/* eta into the n-vector eta, or only into a block buffer when eta is NULL. The rows are split
 * between nt threads. Rows sorted by group (d->sorted): the split falls between groups, so each
 * thread owns its groups' sums in c (only X'WX and X'Wz, over all groups, are summed per thread
 * and then added in thread order). Otherwise thread t > 0 accumulates into extra[t - 1], and
 * those are added into c in thread order (each thread adding for its share of the groups).
 * The deviance and ||u||^2 parts likewise: the result does not depend on timing. */
static double sweep(const GlmmData *d, const double *T, const double *off, const double *u,
                    const double *beta, int joint, double *eta, double *bT, Cross *c, int with_x,
                    double *dev_out, int nt, Cross *extra, double *part, const double *shift) {
    const int64_t J = d->J, q = d->q, p = d->p, n = d->n;
    const int own = d->sorted != 0;
    for (int t = 0; t < 2 * nt; t++) part[t] = 0.0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        /* the team may be smaller than asked for (nested regions, OMP_DYNAMIC) */
        const int t = omp_get_thread_num(), nth = omp_get_num_threads();
        double usq = 0.0;
        int64_t lo = n * t / nth, hi = n * (t + 1) / nth, jlo = J * t / nth, jhi = J * (t + 1) / nth;
        Cross *ct = t == 0 ? c : &extra[t - 1];
        if (own) { /* whole groups: [jlo, jhi) are this thread's (a group without rows too) */
            lo = group_start(d, lo);
            hi = group_start(d, hi);
            jlo = t == 0 ? 0 : (lo < n ? d->g[lo] : J);
            jhi = t == nth - 1 ? J : (hi < n ? d->g[hi] : J);
        }
        for (int64_t j = jlo; j < jhi; j++) /* (T u)_j for this thread's share of the groups */
            for (int64_t a = 0; a < q; a++) {
                double s = 0.0;
                for (int64_t b = 0; b < q; b++) s += T[a * q + b] * u[j * q + b];
                bT[j * q + a] = s;
                usq += u[j * q + a] * u[j * q + a];
            }
        Cross mine = {c->A, c->cz, c->B, ct->XtWX, ct->XtWz};
        if (own) { /* this thread's groups in c; X'WX, X'Wz of its own */
            memset(c->A + jlo * q * q, 0, sizeof(double) * (jhi - jlo) * q * q);
            memset(c->cz + jlo * q, 0, sizeof(double) * (jhi - jlo) * q);
            if (with_x) {
                memset(c->B + jlo * q * p, 0, sizeof(double) * (jhi - jlo) * q * p);
                memset(mine.XtWX, 0, sizeof(double) * p * p);
                memset(mine.XtWz, 0, sizeof(double) * p);
            }
            ct = &mine; /* its rows touch only its groups: no wait for the other threads */
        } else {
            zero_cross(d, ct, with_x);
#pragma omp barrier
        }
        part[2 * t] = sweep_rows(d, lo, hi, off, beta, shift, bT, joint, eta, ct, with_x);
        part[2 * t + 1] = usq;
        if (nth > 1) {
#pragma omp barrier
            if (!own)
                for (int s = 1; s < nth; s++) {
                    const Cross *e = &extra[s - 1];
                    for (int64_t k = jlo * q * q; k < jhi * q * q; k++) c->A[k] += e->A[k];
                    for (int64_t k = jlo * q; k < jhi * q; k++) c->cz[k] += e->cz[k];
                    if (with_x)
                        for (int64_t k = jlo * q * p; k < jhi * q * p; k++) c->B[k] += e->B[k];
                }
            if (t == 0 && with_x)
                for (int s = 1; s < nth; s++) {
                    for (int64_t k = 0; k < p * p; k++) c->XtWX[k] += extra[s - 1].XtWX[k];
                    for (int64_t k = 0; k < p; k++) c->XtWz[k] += extra[s - 1].XtWz[k];
                }
        }
    }
    double dev = 0.0, usq = 0.0;
    for (int t = 0; t < nt; t++) {
        dev += part[2 * t];
        usq += part[2 * t + 1];
    }
    *dev_out = dev;
    return dev + usq;
}

/* ---- the PIRLS loop (numba's pirls_kernel) ----------------------------------------------- */

static int64_t cross_size(const GlmmData *d) {
    const int64_t J = d->J, q = d->q, p = d->p;
    return J * q * q + J * q + J * q * p + p * p + p;
}

static void cross_at(const GlmmData *d, double *mem, Cross *c) {
    const int64_t J = d->J, q = d->q, p = d->p;
    c->A = mem;
    c->cz = c->A + J * q * q;
    c->B = c->cz + J * q;
    c->XtWX = c->B + J * q * p;
    c->XtWz = c->XtWX + p * p;
}

/* the threads the C kernels use by default (OpenMP's: OMP_NUM_THREADS, else the cores) */
TL_EXPORT int64_t twolevel_max_threads(void) { return omp_get_max_threads(); }

/* the work space twolevel_pirls needs for nt threads, in doubles */
TL_EXPORT int64_t twolevel_work_size(const GlmmData *d, int64_t nt) {
    const int64_t J = d->J, q = d->q, p = d->p;
    return nt * cross_size(d) + J * q + J * q + p + J + nt * (p * p + p) + 2 * nt;
}

/* out: iterations, pdev, ldL2, aic (= devsum + csat), devsum, usq. Returns the status. shift
 * (u-only mode, or NULL): off is the offset o alone and beta sits on Z's columns (X's columns
 * are among Z's), see eta_rows_shift. work: twolevel_work_size(d, nthreads) doubles (any
 * content). With F_NO_ETA (and
 * F_PRE) eta is neither read nor written (a value-only evaluation). */
TL_EXPORT int64_t twolevel_pirls(const GlmmData *d, int64_t flags, const double *T, const double *off,
                       double *eta, double tol, int64_t maxit, double csat, double *u,
                       double *beta, double *Lfac, double *RX, const double *A0,
                       const double *cz0, const double *B0, const double *XtWX0,
                       const double *XtWz0, const double *shift, int64_t nthreads,
                       double *work, double *out) {
    const int64_t J = d->J, q = d->q, p = d->p;
    const int nt = nthreads < 1 ? 1 : (nthreads > 64 ? 64 : (int)nthreads);
    Cross extra[64];
    const int joint = (flags & F_JOINT) != 0, want_rx = (flags & F_WANT_RX) != 0;
    const int refresh = (flags & F_REFRESH) != 0, pre = (flags & F_PRE) != 0;
    const int with_x = joint || want_rx;
    if (q > QMAX || p > PMAX) return NOT_PD;
    if (!pre) flags &= ~F_NO_ETA; /* the first weights come from eta */
    if (joint) shift = NULL;
    double *eta_out = (flags & F_NO_ETA) ? NULL : eta;
    double *mem = work;
    Cross c;
    cross_at(d, mem, &c);
    for (int t = 1; t < nt; t++) cross_at(d, mem + t * cross_size(d), &extra[t - 1]);
    double *bT = mem + nt * cross_size(d), *u_old = bT + J * q, *beta_old = u_old + J * q;
    double *dprod = beta_old + p, *fpart = dprod + J, *spart = fpart + nt * (p * p + p);
    double oldpdev = 1.7976931348623157e308, pdev = oldpdev, dev = NAN, ldL2 = NAN;
    int64_t status = NOT_CONVERGED, it = 0;
    if (pre) {
        memcpy(c.A, A0, sizeof(double) * J * q * q);
        memcpy(c.cz, cz0, sizeof(double) * J * q);
        if (with_x) {
            memcpy(c.B, B0, sizeof(double) * J * q * p);
            memcpy(c.XtWX, XtWX0, sizeof(double) * p * p);
            memcpy(c.XtWz, XtWz0, sizeof(double) * p);
        }
    } else {
        accumulate(d, off, eta, &c, with_x);
    }
    for (it = 1; it <= maxit; it++) {
        memcpy(u_old, u, sizeof(double) * J * q);
        memcpy(beta_old, beta, sizeof(double) * p);
        if (!factor(d, T, &c, Lfac, RX, with_x, joint, u, beta, &ldL2, dprod, fpart, nt)) {
            status = NOT_PD;
            break;
        }
        pdev = sweep(d, T, off, u, beta, joint, eta_out, bT, &c, with_x, &dev, nt, extra, spart,
                     shift);
        if (fabs((oldpdev - pdev) / pdev) < tol) {
            status = OK;
            break;
        }
        if (isnan(pdev) || pdev > oldpdev) {
            int k = 0;
            while (k < MAX_HALF && (isnan(pdev) || pdev > oldpdev)) {
                for (int64_t a = 0; a < J * q; a++) u[a] = 0.5 * (u_old[a] + u[a]);
                if (joint)
                    for (int64_t a = 0; a < p; a++) beta[a] = 0.5 * (beta_old[a] + beta[a]);
                pdev = sweep(d, T, off, u, beta, joint, eta_out, bT, &c, with_x, &dev, nt, extra,
                             spart, shift);
                k++;
            }
            if (isnan(pdev)) {
                status = NAN_PDEV;
                break;
            }
            if (pdev - oldpdev > tol) {
                status = STEP_HALVING;
                break;
            }
        }
        oldpdev = pdev;
    }
    if (it > maxit) it = maxit;
    if (status == OK && refresh) { /* L (and RX) at the final weights, left by the last sweep */
        memcpy(u_old, u, sizeof(double) * J * q);
        memcpy(beta_old, beta, sizeof(double) * p);
        if (!factor(d, T, &c, Lfac, RX, with_x, 0, u_old, beta_old, &ldL2, dprod, fpart, nt))
            status = NOT_PD;
    }
    double usq = 0.0;
    for (int64_t a = 0; a < J * q; a++) usq += u[a] * u[a];
    out[0] = (double)it;
    out[1] = pdev;
    out[2] = ldL2;
    out[3] = dev + csat;
    out[4] = dev;
    out[5] = usq;
    return status;
}

/* the stage-2 start: off_i = o_i + x_i'beta (beta moved into the offset; not when off is
 * NULL) and, when c0 is not NULL, cz_j = c0_j - B0_j beta (no BLAS call, whose threads would
 * spin on the cores the kernels use) */
TL_EXPORT void twolevel_offset(const GlmmData *d, const double *o, const double *beta, double *off,
                     const double *c0, const double *B0, double *cz, int64_t nthreads) {
    const int64_t n = d->n, p = d->p, J = d->J, q = d->q;
    const double *X = d->X;
    const int nt = nthreads < 1 ? 1 : (int)nthreads;
    if (off) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t i = 0; i < n; i++) {
            double s = 0.0;
            for (int64_t c = 0; c < p; c++) s += X[i * p + c] * beta[c];
            off[i] = o[i] + s;
        }
    }
    if (c0)
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && J * q > 4096)
        for (int64_t k = 0; k < J * q; k++) {
            double s = 0.0;
            for (int64_t c = 0; c < p; c++) s += B0[k * p + c] * beta[c];
            cz[k] = c0[k] - s;
        }
}

/* A_j, c_j, B_j, XtWX, XtWz at eta (numba's start_crossprods) */
TL_EXPORT void twolevel_crossprods(const GlmmData *d, const double *off, const double *eta, double *A,
                         double *cz, double *B, double *XtWX, double *XtWz) {
    Cross c = {A, cz, B, XtWX, XtWz};
    accumulate(d, off, eta, &c, 1);
}

/* adaptive Gauss-Hermite sum for one scalar random effect (numba's agq_kernel); out[0] =
 * sum_j devc0_j, out[1] = -2 sum_j log mult_j. work: 3 J doubles (any content). */
TL_EXPORT void twolevel_agq(const GlmmData *d, double t11, const double *off, const double *u,
                  const double *Lfac, int64_t nk, const double *nodes, const double *weights,
                  double *work, double *out) {
    const int64_t n = d->n, J = d->J;
    const double *Z = d->Z;
    const int64_t *g = d->g;
    double *devc0 = work, *mult = work + J, *devc = work + 2 * J;
    memset(mult, 0, sizeof(double) * J);
    double eta[CHUNK], W[CHUNK], zr[CHUNK], dv[CHUNK];
    for (int64_t j = 0; j < J; j++) devc0[j] = u[j] * u[j];
    for (int64_t pass = -1; pass < nk; pass++) {
        double z = pass < 0 ? 0.0 : nodes[pass];
        double *acc = pass < 0 ? devc0 : devc;
        if (pass >= 0) {
            if (z == 0.0) {
                for (int64_t j = 0; j < J; j++) mult[j] += weights[pass];
                continue;
            }
            for (int64_t j = 0; j < J; j++) {
                double uj = u[j] + z / Lfac[j];
                devc[j] = uj * uj;
            }
        }
        for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
            int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;
            for (int64_t k = 0; k < m; k++) {
                int64_t i = i0 + k, j = g[i];
                eta[k] = off[i] + Z[i] * t11 * (pass < 0 ? u[j] : u[j] + z / Lfac[j]);
            }
            rows(d->fam, m, eta, off + i0, d->y + i0, d->w + i0, LY(d, i0), W, zr, dv);
            for (int64_t k = 0; k < m; k++) acc[g[i0 + k]] += dv[k];
        }
        if (pass >= 0)
            for (int64_t j = 0; j < J; j++)
                mult[j] += weights[pass] * exp(0.5 * z * z - 0.5 * (devc[j] - devc0[j]));
    }
    double s0 = 0.0, lm = 0.0;
    for (int64_t j = 0; j < J; j++) {
        s0 += devc0[j];
        lm += log(mult[j]);
    }
    out[0] = s0;
    out[1] = -2.0 * lm;
}

#ifdef TWOLEVEL_PYINIT
/* setup.py builds this file as an extension module; the Windows linker wants its init symbol
 * exported. Never called: Python loads the library with ctypes (twolevel/models/native.py). */
TL_EXPORT void *TWOLEVEL_PYINIT(void) { return 0; }
#endif
