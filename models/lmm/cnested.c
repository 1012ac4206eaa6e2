/* Several nested grouping factors in C: the per-innermost-group cross-products (the statistics
 * stage) and the block elimination of the profiled REML/ML criterion over the levels (the
 * objective); and, for crossed factors, the sparse part of the dense Schur block. The same maths as twolevel/models/lmm/nested.py (whose docstring gives the
 * formulas) and twolevel/models/design/multi_stats.py, the NumPy references a test compares with;
 * built with the package by setup.py and loaded by twolevel/models/lmm/cnested.py (ctypes).
 *
 * Layout (row-major, NumPy's C order): C n1 x d x d (d = sum q_k + p + 1; [Z_1 ... Z_K X y]),
 * T d x d lower triangular, block diagonal (T_1, ..., T_K, I_{p+1}), only its leading qt x qt
 * block read (qt = sum q_k); parents: for k = 0..K-2 the parent (a level-(k+1) index) of every
 * level-k group, concatenated.
 *
 * Built with -fno-tree-vectorize (the loops run over blocks of a few rows; GCC's AVX2
 * vectorisation of them made the criterion 1.5 times slower) and -fno-semantic-interposition
 * (measured 1.8 times faster under -fPIC).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(_WIN32)
#define TL_EXPORT __declspec(dllexport)
#else
#define TL_EXPORT __attribute__((visibility("default")))
#endif

#define OK 0
#define NOT_PD 1
#define DMAX 64 /* cnested.py checks d <= DMAX */
#define LOG_FLUSH 1e100

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p, 1, 1)
#else
#define PREFETCH(p) ((void)0)
#endif
#define AHEAD 16 /* rows ahead whose group block is prefetched */

/* C[codes[i]] += w_i w_i' over the rows; cols[a] points at the n values of column a of
 * W = [Z_1 ... Z_K X y]; weights NULL or n row weights (each row's product multiplied by its
 * weight). The sums run in P (G x d(d+1)/2, the upper triangles packed row by row, zeroed by the
 * caller: half the memory the rows touch at random) and are then spread into C (G x d x d,
 * symmetric). Row order and operation order are numpy.bincount's, so the sums are the same
 * numbers. */
TL_EXPORT void twolevel_group_crossprods(const double *const *cols, const double *weights,
                                         const int64_t *codes, int64_t n, int64_t d, int64_t G,
                                         double *P, double *C) {
    const int64_t np_ = d * (d + 1) / 2;
    double w[DMAX];
    for (int64_t i = 0; i < n; i++) {
        if (i + AHEAD < n) PREFETCH(P + codes[i + AHEAD] * np_);
        double *Pg = P + codes[i] * np_;
        for (int64_t a = 0; a < d; a++) w[a] = cols[a][i];
        for (int64_t a = 0; a < d; a++) {
            double wa = weights ? w[a] * weights[i] : w[a];
            for (int64_t b = a; b < d; b++) *Pg++ += wa * w[b];
        }
    }
    for (int64_t g = 0; g < G; g++) {
        const double *Pg = P + g * np_;
        double *Cg = C + g * d * d;
        for (int64_t a = 0; a < d; a++)
            for (int64_t b = a; b < d; b++) {
                double v = *Pg++;
                Cg[a * d + b] = v;
                Cg[b * d + a] = v;
            }
    }
}

/* 2 sum log diag L of many blocks without a log per block: the squared diagonals (all >= 1,
 * each block being I + a positive semi-definite matrix) multiplied up and flushed to a log sum */
static void fold(double v, double *prod, double *logsum) {
    *prod *= v;
    if (*prod > LOG_FLUSH) {
        *logsum += log(*prod);
        *prod = 1.0;
    }
}

/* One block step on the lower triangle of G (m x m, row-major): G_11 + I_q = L L' (in place),
 * R' = L^-1 G_12 (in place, rows 0..q-1 of the columns q..m-1 stored in the lower part G[c][a]),
 * F = G_22 - R R' added into the lower triangle of out (r x r, r = m - q). */
static int eliminate(double *G, int64_t m, int64_t q, double *out, double *prod,
                     double *logsum) {
    const int64_t r = m - q;
    if (q == 1) { /* a random intercept: F = G_22 - g g' / (G_11 + 1) */
        double s = G[0] + 1.0;
        if (!(s > 0.0)) return NOT_PD;
        fold(s, prod, logsum);
        double inv = 1.0 / s;
        for (int64_t c1 = 0; c1 < r; c1++) {
            const double *g1 = G + (1 + c1) * m;
            double v = g1[0] * inv;
            double *o = out + c1 * r;
            for (int64_t c2 = 0; c2 <= c1; c2++) o[c2] += g1[1 + c2] - v * G[(1 + c2) * m];
        }
        return OK;
    }
    for (int64_t a = 0; a < q; a++) {
        for (int64_t b = 0; b <= a; b++) {
            double s = G[a * m + b] + (a == b ? 1.0 : 0.0);
            for (int64_t k = 0; k < b; k++) s -= G[a * m + k] * G[b * m + k];
            if (a == b) {
                if (!(s > 0.0)) return NOT_PD;
                G[a * m + a] = sqrt(s);
                fold(s, prod, logsum);
            } else {
                G[a * m + b] = s / G[b * m + b];
            }
        }
    }
    /* R'[a][c] = (G[q+c][a] - sum_{k<a} L[a][k] R'[k][c]) / L[a][a], kept in G[q+c][a] */
    for (int64_t c = 0; c < r; c++) {
        double *gc = G + (q + c) * m;
        for (int64_t a = 0; a < q; a++) {
            double s = gc[a];
            for (int64_t k = 0; k < a; k++) s -= G[a * m + k] * gc[k];
            gc[a] = s / G[a * m + a];
        }
    }
    for (int64_t c1 = 0; c1 < r; c1++) {
        const double *g1 = G + (q + c1) * m;
        for (int64_t c2 = 0; c2 <= c1; c2++) {
            const double *g2 = G + (q + c2) * m;
            double s = g1[q + c2];
            for (int64_t k = 0; k < q; k++) s -= g1[k] * g2[k];
            out[c1 * r + c2] += s;
        }
    }
    return OK;
}

/* T'C_cT, lower triangle, into G (d x d): T is the identity beyond its leading qt x qt block;
 * diagonal: T is diagonal (then only t_a t_b C_ab with t in CT[0..d-1]); else CT is d x d work. */
static void scale(const double *Cc, const double *T, int64_t d, int64_t qt, int diagonal,
                  double *CT, double *G) {
    if (diagonal) { /* t = diag(T) (ones beyond qt), set once by the caller in CT's first row */
        for (int64_t a = 0; a < d; a++)
            for (int64_t b = 0; b <= a; b++) G[a * d + b] = Cc[a * d + b] * CT[a] * CT[b];
        return;
    }
    for (int64_t i = 0; i < d; i++)
        for (int64_t b = 0; b < d; b++) {
            if (b >= qt) {
                CT[i * d + b] = Cc[i * d + b];
                continue;
            }
            double s = 0.0;
            for (int64_t j = b; j < qt; j++) s += Cc[i * d + j] * T[j * d + b];
            CT[i * d + b] = s;
        }
    for (int64_t a = 0; a < d; a++)
        for (int64_t b = 0; b <= a; b++) {
            if (a >= qt) {
                G[a * d + b] = CT[a * d + b];
                continue;
            }
            double s = 0.0;
            for (int64_t i = a; i < qt; i++) s += T[i * d + a] * CT[i * d + b];
            G[a * d + b] = s;
        }
}

/* The block elimination at T: out[0] = log|L|^2 (all levels), and F ((p+1) x (p+1), full
 * symmetric) the Schur complement on [X y]; returns OK or NOT_PD. q, n_levels: K entries,
 * innermost first. acc: work for the accumulators of the levels 1..K-1 (n_levels[k] blocks of
 * m_k x m_k, m_k = d - q_0 - ... - q_{k-1}, level after level; zeroed here). */
static int64_t nested_eliminate(const double *C, const double *T, int64_t d, int64_t K,
                                const int64_t *q, const int64_t *n_levels, const int64_t *parents,
                                int64_t diagonal, double *acc, double *F, double *out) {
    int64_t qt = 0;
    for (int64_t k = 0; k < K; k++) qt += q[k];
    int64_t m = d;
    size_t total = 0;
    for (int64_t k = 1; k < K; k++) {
        m -= q[k - 1];
        total += (size_t)n_levels[k] * m * m;
    }
    memset(acc, 0, sizeof(double) * total);
    double G[DMAX * DMAX], CT[DMAX * DMAX];
    double prod = 1.0, logsum = 0.0;
    int64_t status = OK;
    const int64_t pm = d - qt; /* p + 1 */
    memset(F, 0, sizeof(double) * pm * pm);
    /* innermost level: scale each C_c, eliminate, add into the parent (or F) */
    int64_t r0 = d - q[0];
    double *dest = K > 1 ? acc : F;
    if (diagonal)
        for (int64_t a = 0; a < d; a++) CT[a] = a < qt ? T[a * d + a] : 1.0;
    if (diagonal && q[0] == 1) {
        /* random intercepts innermost, T = diag(t): F_c = D (C_c,22 - w_c c c') D with
         * c = C_c,21, w_c = t_0^2 / (t_0^2 C_c,11 + 1) and D = diag(t_1..t_{d-1}), so the sums
         * run unscaled and D is applied once to each parent's block below */
        const double t0s = CT[0] * CT[0];
        for (int64_t c = 0; c < n_levels[0]; c++) {
            const double *Cc = C + c * d * d;
            double s = t0s * Cc[0] + 1.0;
            if (!(s > 0.0)) {
                status = NOT_PD;
                break;
            }
            fold(s, &prod, &logsum);
            const double w = t0s / s;
            double *o = K > 1 ? dest + parents[c] * r0 * r0 : F;
            for (int64_t i = 0; i < r0; i++) {
                const double *ci = Cc + (1 + i) * d;
                const double v = w * ci[0];
                double *oi = o + i * r0;
                for (int64_t j = 0; j <= i; j++) oi[j] += ci[1 + j] - v * Cc[(1 + j) * d];
            }
        }
        int64_t nb = K > 1 ? n_levels[1] : 1;
        for (int64_t b = 0; b < nb; b++) {
            double *o = (K > 1 ? dest : F) + b * r0 * r0;
            for (int64_t i = 0; i < r0; i++)
                for (int64_t j = 0; j <= i; j++) o[i * r0 + j] *= CT[1 + i] * CT[1 + j];
        }
    } else {
        for (int64_t c = 0; c < n_levels[0] && status == OK; c++) {
            scale(C + c * d * d, T, d, qt, (int)diagonal, CT, G);
            double *o = K > 1 ? dest + parents[c] * r0 * r0 : F;
            status = eliminate(G, d, q[0], o, &prod, &logsum);
        }
    }
    /* the next levels: each accumulated block (lower triangle) eliminated into its parent */
    const int64_t *par = parents + n_levels[0];
    double *level = acc;
    m = r0;
    for (int64_t k = 1; k < K && status == OK; k++) {
        int64_t r = m - q[k];
        double *next = k < K - 1 ? level + (size_t)n_levels[k] * m * m : F;
        for (int64_t s = 0; s < n_levels[k] && status == OK; s++) {
            double *o = k < K - 1 ? next + par[s] * r * r : F;
            status = eliminate(level + (size_t)s * m * m, m, q[k], o, &prod, &logsum);
        }
        if (k < K - 1) par += n_levels[k];
        level = next;
        m = r;
    }
    for (int64_t a = 0; a < pm; a++)
        for (int64_t b = a + 1; b < pm; b++) F[a * pm + b] = F[b * pm + a];
    out[0] = status == OK ? logsum + log(prod) : NAN;
    return status;
}

/* (static above, exported here, so that twolevel_nested_parts calls the static one) */
TL_EXPORT int64_t twolevel_nested_eliminate(const double *C, const double *T, int64_t d,
                                            int64_t K, const int64_t *q, const int64_t *n_levels,
                                            const int64_t *parents, int64_t diagonal, double *acc,
                                            double *F, double *out) {
    return nested_eliminate(C, T, d, K, q, n_levels, parents, diagonal, acc, F, out);
}

/* The criterion's parts at T: out = (log|L|^2, log|L_X|^2, r^2) from the elimination and the
 * Cholesky of F = [[L_X, 0], [l', r]][[L_X, 0], [l', r]]'; F ((p+1) x (p+1)) is work. */
TL_EXPORT int64_t twolevel_nested_parts(const double *C, const double *T, int64_t d, int64_t K,
                                        const int64_t *q, const int64_t *n_levels,
                                        const int64_t *parents, int64_t diagonal, double *acc,
                                        double *F, double *out) {
    int64_t status = nested_eliminate(C, T, d, K, q, n_levels, parents, diagonal, acc, F, out);
    if (status != OK) return status;
    int64_t qt = 0;
    for (int64_t k = 0; k < K; k++) qt += q[k];
    const int64_t pm = d - qt, p = pm - 1;
    double ldrx = 0.0;
    for (int64_t a = 0; a < pm; a++) {
        for (int64_t b = 0; b <= a; b++) {
            double s = F[a * pm + b];
            for (int64_t k = 0; k < b; k++) s -= F[a * pm + k] * F[b * pm + k];
            if (a == b) {
                if (!(s > 0.0)) return NOT_PD;
                if (a == p) {
                    out[1] = ldrx;
                    out[2] = s;
                    return OK;
                }
                F[a * pm + a] = sqrt(s);
                ldrx += log(s);
            } else {
                F[a * pm + b] = s / F[b * pm + b];
            }
        }
    }
    return NOT_PD; /* not reached: the loop returns at a == p */
}

/* twolevel_nested_parts with its eleven arguments packed in one int64 array (pointers as
 * integers, in the order of the signature): one argument for ctypes to convert, which saves
 * ~25 microseconds of an evaluation that takes ~70 at Chem97's size. */
TL_EXPORT int64_t twolevel_nested_parts_packed(const int64_t *a) {
    return twolevel_nested_parts((const double *)(intptr_t)a[0], (const double *)(intptr_t)a[1],
                                 a[2], a[3], (const int64_t *)(intptr_t)a[4],
                                 (const int64_t *)(intptr_t)a[5], (const int64_t *)(intptr_t)a[6],
                                 a[7], (double *)(intptr_t)a[8], (double *)(intptr_t)a[9],
                                 (double *)(intptr_t)a[10]);
}

/* Crossed factors, a scalar first factor (models/lmm/crossed.py): S -= A diag(w) A' for the
 * sparse m x n matrix A given by columns (CSC: indptr n + 1, indices sorted within each column,
 * data), on the lower triangle of S (m x m row-major): S[r_a][r_b] -= w_l x_a x_b over every
 * column l and every pair of its nonzeros with r_b <= r_a. The sparse product's structure is the
 * same at every theta; only w changes. */
TL_EXPORT void twolevel_sub_scaled_gram(const int64_t *indptr, const int64_t *indices,
                                        const double *data, int64_t n, const double *w,
                                        int64_t m, double *S) {
    for (int64_t l = 0; l < n; l++) {
        const double wl = w[l];
        for (int64_t a = indptr[l]; a < indptr[l + 1]; a++) {
            const double xa = wl * data[a];
            double *row = S + indices[a] * m;
            for (int64_t b = indptr[l]; b <= a; b++) row[indices[b]] -= xa * data[b];
        }
    }
}

/* The dense Schur block of crossed factors with scalar terms, lower triangle, in one pass:
 * S = D (Arr - A diag(w) A') D + (I_qr + 0) with D = diag(t); Arr m x m (full, symmetric),
 * A as in twolevel_sub_scaled_gram, S m x m row-major (its strict upper triangle not written). */
TL_EXPORT void twolevel_crossed_schur(const double *Arr, const double *t, int64_t m, int64_t qr,
                                      const int64_t *indptr, const int64_t *indices,
                                      const double *data, int64_t n, const double *w,
                                      double *S) {
    for (int64_t i = 0; i < m; i++) {
        const double ti = t[i];
        for (int64_t j = 0; j <= i; j++) S[i * m + j] = Arr[i * m + j] * ti * t[j];
    }
    for (int64_t l = 0; l < n; l++) {
        const double wl = w[l];
        for (int64_t a = indptr[l]; a < indptr[l + 1]; a++) {
            const int64_t ra = indices[a];
            const double xa = wl * data[a] * t[ra];
            double *row = S + ra * m;
            for (int64_t b = indptr[l]; b <= a; b++) {
                const int64_t rb = indices[b];
                row[rb] -= xa * (data[b] * t[rb]);
            }
        }
    }
    for (int64_t i = 0; i < qr; i++) S[i * m + i] += 1.0;
}

#ifdef TWOLEVEL_PYINIT
/* setup.py builds this file as an extension module; the Windows linker wants its init symbol
 * exported. Never called: Python loads the library with ctypes (twolevel/models/native.py). */
TL_EXPORT void *TWOLEVEL_PYINIT(void) { return 0; }
#endif
