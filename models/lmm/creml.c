/* The profiled REML/ML criterion's loops over groups in C: the same maths, layout and operation
 * order as the numba kernels of twolevel/models/lmm/kernels.py (the reference, whose docstrings
 * give the formulas; a test checks the two agree), built with the package by setup.py and
 * loaded by twolevel/models/lmm/creml.py, so that a first fit in a fresh process loads machine
 * code in microseconds instead of numba and its cache.
 *
 * Layout (row-major, as NumPy's C order): T q x q (lower), A J x q x q, BC J x q x m (m = p + 1:
 * [B_j c_j]), aug (p+1) x (p+1) ([[X'X, X'y], [y'X, y'y]], upper triangle used).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(_WIN32)
#define TL_EXPORT __declspec(dllexport)
#else
#define TL_EXPORT __attribute__((visibility("default")))
#endif

#define OK 0
#define X_NOT_PD 1
#define BLOCK 512
#define LOG_FLUSH 1e100
#define LOG_DIRECT 1e200
#define QMAX 32 /* creml.py checks q <= QMAX and p + 1 <= MMAX */
#define MMAX 128

/* M_j = T'A_jT + I = L D L' (L unit lower, strictly lower part in L); dinv = 1/diag(D);
 * returns det M_j (numba's _group_ldl) */
static double group_ldl(const double *T, const double *Aj, int64_t q, double *AT, double *L,
                        double *dinv) {
    for (int64_t a = 0; a < q; a++)
        for (int64_t c = 0; c < q; c++) {
            double s = 0.0;
            for (int64_t b = c; b < q; b++) s += Aj[a * q + b] * T[b * q + c];
            AT[a * q + c] = s;
        }
    for (int64_t a = 0; a < q; a++)
        for (int64_t c = 0; c <= a; c++) {
            double s = a == c ? 1.0 : 0.0;
            for (int64_t b = a; b < q; b++) s += T[b * q + a] * AT[b * q + c];
            L[a * q + c] = s;
        }
    double det = 1.0;
    for (int64_t i = 0; i < q; i++) {
        double d = L[i * q + i];
        for (int64_t k = 0; k < i; k++) d -= L[i * q + k] * L[i * q + k] * dinv[k];
        det *= d;
        double di = 1.0 / d;
        dinv[i] = di;
        for (int64_t r = i + 1; r < q; r++) {
            double s = L[r * q + i];
            for (int64_t k = 0; k < i; k++) s -= L[r * q + k] * L[i * q + k] * dinv[k];
            L[r * q + i] = s;
        }
    }
    for (int64_t i = 0; i < q; i++)
        for (int64_t r = i + 1; r < q; r++) L[r * q + i] *= dinv[i];
    return det;
}

/* R <- L^-1 T' [B_j c_j] (q x m) (numba's _group_r) */
static void group_r(const double *T, const double *BCj, int64_t q, int64_t m, const double *L,
                    double *R) {
    for (int64_t a = 0; a < q; a++)
        for (int64_t k = 0; k < m; k++) {
            double s = 0.0;
            for (int64_t b = a; b < q; b++) s += T[b * q + a] * BCj[b * m + k];
            for (int64_t b = 0; b < a; b++) s -= L[a * q + b] * R[b * m + k];
            R[a * m + k] = s;
        }
}

static void fold_log(double det, double *prod, double *logsum) {
    if (det > LOG_DIRECT) {
        *logsum += log(det);
        return;
    }
    *prod *= det;
    if (*prod > LOG_FLUSH) {
        *logsum += log(*prod);
        *prod = 1.0;
    }
}

/* in-place upper Cholesky of the down-dated aug (m x m); r2, log|R_X|^2, status */
static int64_t downdated_cholesky(double *aug, int64_t m, double *r2, double *ldrx2) {
    int64_t p = m - 1;
    double l = 0.0;
    for (int64_t i = 0; i < m; i++) {
        double d = aug[i * m + i];
        for (int64_t k = 0; k < i; k++) d -= aug[k * m + i] * aug[k * m + i];
        if (i == p) {
            *r2 = d > 0.0 ? d : 0.0;
            *ldrx2 = l;
            return OK;
        }
        if (!(d > 0.0)) {
            *r2 = NAN;
            *ldrx2 = NAN;
            return X_NOT_PD;
        }
        double uii = sqrt(d);
        aug[i * m + i] = uii;
        l += 2.0 * log(uii);
        for (int64_t c = i + 1; c < m; c++) {
            double s = aug[i * m + c];
            for (int64_t k = 0; k < i; k++) s -= aug[k * m + i] * aug[k * m + c];
            aug[i * m + c] = s / uii;
        }
    }
    *r2 = NAN;
    *ldrx2 = NAN;
    return X_NOT_PD;
}

static double downdate_general(const double *T, const double *A, const double *BC, int64_t J,
                               int64_t q, int64_t m, double *aug) {
    double AT[QMAX * QMAX], L[QMAX * QMAX], dinv[QMAX];
    double *R = malloc(sizeof(double) * q * m);
    double prod = 1.0, logsum = 0.0;
    for (int64_t j = 0; j < J; j++) {
        double det = group_ldl(T, A + j * q * q, q, AT, L, dinv);
        fold_log(det, &prod, &logsum);
        group_r(T, BC + j * q * m, q, m, L, R);
        for (int64_t a = 0; a < q; a++) {
            double da = dinv[a];
            for (int64_t k = 0; k < m; k++) {
                double rk = R[a * m + k] * da;
                for (int64_t c = k; c < m; c++) aug[k * m + c] -= rk * R[a * m + c];
            }
        }
    }
    free(R);
    return logsum + log(prod);
}

static double weighted_dot(const double *w, const double *x, const double *y, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += w[i] * x[i] * y[i];
    return s;
}

static double downdate_q2(const double *T, const double *A, const double *BC, int64_t J,
                          int64_t m, double *aug) {
    const double t00 = T[0], t10 = T[2], t11 = T[3];
    double det[BLOCK], d0inv[BLOCK], d1inv[BLOCK], l10[BLOCK];
    double *r0 = malloc(sizeof(double) * m * BLOCK), *r1 = malloc(sizeof(double) * m * BLOCK);
    double prod = 1.0, logsum = 0.0;
    for (int64_t start = 0; start < J; start += BLOCK) {
        int64_t n = J - start < BLOCK ? J - start : BLOCK;
        for (int64_t i = 0; i < n; i++) {
            const double *Aj = A + (start + i) * 4;
            double a00 = Aj[0], a01 = Aj[1], a11 = Aj[3];
            double at00 = a00 * t00 + a01 * t10, at10 = a01 * t00 + a11 * t10;
            double m00 = 1.0 + t00 * at00 + t10 * at10, m10 = t11 * at10;
            double m11 = 1.0 + t11 * (a11 * t11);
            double d0i = 1.0 / m00, lo = m10 * d0i, d1 = m11 - lo * m10;
            d0inv[i] = d0i;
            d1inv[i] = 1.0 / d1;
            l10[i] = lo;
            det[i] = m00 * d1;
        }
        for (int64_t i = 0; i < n; i++) fold_log(det[i], &prod, &logsum);
        for (int64_t k = 0; k < m; k++)
            for (int64_t i = 0; i < n; i++) {
                const double *BCj = BC + (start + i) * 2 * m;
                double b0 = BCj[k], b1 = BCj[m + k];
                double v = t00 * b0 + t10 * b1;
                r0[k * BLOCK + i] = v;
                r1[k * BLOCK + i] = t11 * b1 - l10[i] * v;
            }
        for (int64_t k = 0; k < m; k++)
            for (int64_t c = k; c < m; c++)
                aug[k * m + c] -= weighted_dot(d0inv, r0 + k * BLOCK, r0 + c * BLOCK, n) +
                                  weighted_dot(d1inv, r1 + k * BLOCK, r1 + c * BLOCK, n);
    }
    free(r0);
    free(r1);
    return logsum + log(prod);
}

/* numba's pls_parts_kernel: out = (r2, log|L|^2, log|R_X|^2); returns the status. aug is work
 * space (m x m) that receives a copy of aug0. */
TL_EXPORT int64_t twolevel_pls_parts(const double *T, const double *A, const double *BC,
                                     const double *aug0, int64_t J, int64_t q, int64_t m,
                                     double *aug, double *out) {
    memcpy(aug, aug0, sizeof(double) * m * m);
    double ldl2 = q == 2 ? downdate_q2(T, A, BC, J, m, aug)
                         : downdate_general(T, A, BC, J, q, m, aug);
    double r2, ldrx2;
    int64_t status = downdated_cholesky(aug, m, &r2, &ldrx2);
    out[0] = r2;
    out[1] = ldl2;
    out[2] = ldrx2;
    return status;
}

/* numba's theta_grad_kernel: dld (q x q), dr2 (q x q), S (q x q x p x p, zeroed by the caller
 * when with_w) */
TL_EXPORT void twolevel_theta_grad(const double *T, const double *A, const double *BC,
                                   const double *beta, int64_t J, int64_t q, int64_t m,
                                   int64_t with_w, double *dld, double *dr2, double *S) {
    const int64_t p = m - 1;
    double AT[QMAX * QMAX], L[QMAX * QMAX], Li[QMAX * QMAX], dinv[QMAX], Minv[QMAX * QMAX];
    double ATMi[QMAX * QMAX], w[QMAX], u[QMAX];
    double *W = malloc(sizeof(double) * (q * p + 1)), *TW = malloc(sizeof(double) * (q * p + 1));
    memset(Li, 0, sizeof(Li));
    memset(dld, 0, sizeof(double) * q * q);
    memset(dr2, 0, sizeof(double) * q * q);
    for (int64_t j = 0; j < J; j++) {
        const double *BCj = BC + j * q * m;
        group_ldl(T, A + j * q * q, q, AT, L, dinv);
        for (int64_t i = 0; i < q; i++) {
            Li[i * q + i] = 1.0;
            for (int64_t k = 0; k < i; k++) {
                double s = L[i * q + k];
                for (int64_t t = k + 1; t < i; t++) s += L[i * q + t] * Li[t * q + k];
                Li[i * q + k] = -s;
            }
        }
        for (int64_t a = 0; a < q; a++)
            for (int64_t b = 0; b <= a; b++) {
                double s = 0.0;
                for (int64_t i = a; i < q; i++) s += Li[i * q + a] * Li[i * q + b] * dinv[i];
                Minv[a * q + b] = s;
                Minv[b * q + a] = s;
            }
        for (int64_t r = 0; r < q; r++)
            for (int64_t c = 0; c < q; c++) {
                double s = 0.0;
                for (int64_t k = 0; k < q; k++) s += AT[r * q + k] * Minv[k * q + c];
                ATMi[r * q + c] = s;
                dld[r * q + c] += s;
            }
        for (int64_t a = 0; a < q; a++) {
            double s = BCj[a * m + p];
            for (int64_t k = 0; k < p; k++) s -= BCj[a * m + k] * beta[k];
            w[a] = s;
        }
        for (int64_t a = 0; a < q; a++) {
            double s = 0.0;
            for (int64_t b = 0; b < q; b++) {
                double tw = 0.0;
                for (int64_t k = b; k < q; k++) tw += T[k * q + b] * w[k];
                s += Minv[a * q + b] * tw;
            }
            u[a] = s;
        }
        for (int64_t r = 0; r < q; r++) {
            double res = w[r];
            for (int64_t k = 0; k < q; k++) res -= AT[r * q + k] * u[k];
            for (int64_t c = 0; c < q; c++) dr2[r * q + c] += u[c] * res;
        }
        if (!with_w) continue;
        for (int64_t a = 0; a < q; a++)
            for (int64_t k = 0; k < p; k++) {
                double s = BCj[a * m + k];
                for (int64_t b = 0; b < q; b++) {
                    double coef = 0.0;
                    for (int64_t t = 0; t <= b; t++) coef += ATMi[a * q + t] * T[b * q + t];
                    s -= coef * BCj[b * m + k];
                }
                W[a * p + k] = s;
            }
        for (int64_t c = 0; c < q; c++)
            for (int64_t k = 0; k < p; k++) {
                double s = 0.0;
                for (int64_t a = c; a < q; a++) s += T[a * q + c] * W[a * p + k];
                TW[c * p + k] = s;
            }
        for (int64_t r = 0; r < q; r++)
            for (int64_t c = 0; c < q; c++)
                for (int64_t a = 0; a < p; a++) {
                    double wa = W[r * p + a];
                    double *Srca = S + ((r * q + c) * p + a) * p;
                    for (int64_t b = 0; b < p; b++) Srca[b] += wa * TW[c * p + b];
                }
    }
    free(W);
    free(TW);
}

#ifdef TWOLEVEL_PYINIT
/* setup.py builds this file as an extension module; the Windows linker wants its init symbol
 * exported. Never called: Python loads the library with ctypes (twolevel/models/native.py). */
TL_EXPORT void *TWOLEVEL_PYINIT(void) { return 0; }
#endif
