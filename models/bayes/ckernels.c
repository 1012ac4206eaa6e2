/* The collapsed two-level model's log density and gradient in C: the same maths, data layout and
 * operation order as the numba kernels of twolevel/models/bayes/kernels.py (whose module
 * docstring gives the formulas), compiled by the system C compiler once per installation
 * (twolevel/models/bayes/ckernels.py) instead of by numba on first use.
 *
 * data: the flat float64 vector of twolevel.models.bayes.sampler.pack_data —
 *   header [q, p, J, n, struct, eta, fbeta, fsigma, fsd, const] | β prior (3p) | σ prior (2) |
 *   sd prior (2q) | A_j (J q²) | B_j (J q p) | c_j (J q) | XᵀX (p²) | Xᵀy (p) | yᵀy.
 * x: [β (p) | log σ | LKJ packed factor with log diagonal (q(q+1)/2), or log sd (q)].
 * The callbacks have nutpie's signatures (logp: int64(uint64, double*, double*, double*, void*),
 * expand: int64(uint64, uint64, double*, double*, void*)); nutpie calls them from its threads.
 * Compile with -O2 and without -ffast-math: non-finite values are reported, not assumed away.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define HEADER 10
enum { I_Q, I_P, I_J, I_N, I_STRUCT, I_ETA, I_FBETA, I_FSIGMA, I_FSD, I_CONST };
#define LOG_FLUSH 1e100

/* variable part of a positive prior's log density at v > 0 and its derivative (*dv):
 * HalfNormal(a), HalfStudentT(a, nu=b), HalfCauchy(a), Exponential(lam=a), Gamma(alpha=a, beta=b) */
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

typedef struct {
    int q, p;
    long J;
    long o_pb, o_ps, o_pd, o_A, o_B, o_c, o_XtX, o_Xty;
} layout;

static layout get_layout(const double *data) {
    layout s;
    s.q = (int)data[I_Q];
    s.p = (int)data[I_P];
    s.J = (long)data[I_J];
    s.o_pb = HEADER;
    s.o_ps = s.o_pb + 3 * s.p;
    s.o_pd = s.o_ps + 2;
    s.o_A = s.o_pd + 2 * s.q;
    s.o_B = s.o_A + s.J * s.q * s.q;
    s.o_c = s.o_B + s.J * s.q * s.p;
    s.o_XtX = s.o_c + s.J * s.q;
    s.o_Xty = s.o_XtX + (long)s.p * s.p;
    return s;
}

/* L (q×q, row-major, lower) from x: LKJ packed rows with exp on the diagonal, or diag(exp) */
static void unpack_L(const double *x, const double *data, int q, int p, double *L) {
    int k = p + 1;
    memset(L, 0, sizeof(double) * q * q);
    if ((int)data[I_STRUCT] == 0) {
        for (int i = 0; i < q; i++)
            for (int j = 0; j <= i; j++) {
                L[i * q + j] = (i == j) ? exp(x[k]) : x[k];
                k++;
            }
    } else {
        for (int i = 0; i < q; i++) L[i * q + i] = exp(x[k + i]);
    }
}

/* ℓ and its gradient from the school sums, plus the priors with their transforms' Jacobians
 * (kernels._assemble). GL (q×q lower, ∂ℓ/∂L so far) is updated in place. */
static double assemble(const double *x, double *grad, const double *data, const layout *s,
                       const double *L, double sigma, double sum_logdet, double sum_Q,
                       double sum_trW, double sum_hh, double *GL, const double *gB) {
    const int q = s->q, p = s->p;
    const double n = data[I_N], eta = data[I_ETA];
    const int strct = (int)data[I_STRUCT];
    const double yty = data[s->o_Xty + p];
    const double s2 = sigma * sigma, s4 = s2 * s2, s6 = s4 * s2;

    double S = yty;
    for (int k = 0; k < p; k++) {
        double xb = 0.0;
        for (int l = 0; l < p; l++) xb += data[s->o_XtX + k * p + l] * x[l];
        S += x[k] * xb - 2.0 * x[k] * data[s->o_Xty + k];
        grad[k] = -(xb - data[s->o_Xty + k]) / s2 - gB[k] / s4;
    }
    double lp = data[I_CONST] - 0.5 * (n * log(s2) + sum_logdet + S / s2 - sum_Q / s4);
    double g_s2 = -0.5 * (n / s2 - ((double)(s->J * q) - sum_trW) / s2 - S / s4
                          + (sum_Q + sum_hh) / s6);

    const int fb = (int)data[I_FBETA];
    for (int k = 0; k < p; k++) {
        double mu = data[s->o_pb + 3 * k], sk = data[s->o_pb + 3 * k + 1],
               nu = data[s->o_pb + 3 * k + 2];
        double r = x[k] - mu;
        if (fb == 0) {
            lp += -0.5 * (r / sk) * (r / sk);
            grad[k] += -r / (sk * sk);
        } else {
            lp += -0.5 * (nu + 1.0) * log1p((r / sk) * (r / sk) / nu);
            grad[k] += -(nu + 1.0) * r / (nu * sk * sk + r * r);
        }
    }
    double dv;
    double v = positive_logp((int)data[I_FSIGMA], sigma, data[s->o_ps], data[s->o_ps + 1], &dv);
    lp += v + x[p];
    grad[p] = 2.0 * s2 * g_s2 + sigma * dv + 1.0;

    const int fd = (int)data[I_FSD];
    if (strct == 0) {
        for (int i = 0; i < q; i++) {
            double ss = 0.0;
            for (int j = 0; j <= i; j++) ss += L[i * q + j] * L[i * q + j];
            double sd = sqrt(ss);
            double kk = 2.0 * eta - 2.0 + q - i;
            v = positive_logp(fd, sd, data[s->o_pd + 2 * i], data[s->o_pd + 2 * i + 1], &dv);
            lp += kk * (log(L[i * q + i]) - log(sd)) - i * log(sd) + v;
            for (int j = 0; j <= i; j++) {
                double g = -(kk + i) * L[i * q + j] / ss + dv * L[i * q + j] / sd;
                if (i == j) g += kk / L[i * q + i];
                GL[i * q + j] += g;
            }
        }
        int k = p + 1;
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
    } else {
        for (int i = 0; i < q; i++) {
            v = positive_logp(fd, L[i * q + i], data[s->o_pd + 2 * i], data[s->o_pd + 2 * i + 1],
                              &dv);
            lp += v + x[p + 1 + i];
            grad[p + 1 + i] = L[i * q + i] * (GL[i * q + i] + dv) + 1.0;
        }
    }
    return lp;
}

/* q = 2 in closed form (kernels.logp_grad_q2) */
static double logp_grad_q2(const double *x, double *grad, const double *data) {
    const layout s = get_layout(data);
    const int p = s.p;
    double L[4], GL[4] = {0.0, 0.0, 0.0, 0.0};
    double gB[p > 0 ? p : 1];
    memset(gB, 0, sizeof(gB));
    unpack_L(x, data, 2, p, L);
    const double sigma = exp(x[p]);
    const double s2 = sigma * sigma, i2 = 1.0 / s2, i4 = i2 * i2, i6 = i4 * i2;
    const double l00 = L[0], l10 = L[2], l11 = L[3];
    double g00 = 0.0, g10 = 0.0, g11 = 0.0;
    double sum_Q = 0.0, sum_trW = 0.0, sum_hh = 0.0, logsum = 0.0, prod = 1.0;
    for (long j = 0; j < s.J; j++) {
        const double *A = data + s.o_A + 4 * j;
        const double *B = data + s.o_B + 2 * p * j;
        const double *c = data + s.o_c + 2 * j;
        double d0 = c[0], d1 = c[1];
        for (int l = 0; l < p; l++) {
            d0 -= B[l] * x[l];
            d1 -= B[p + l] * x[l];
        }
        const double a00 = A[0], a01 = A[1], a11 = A[3];
        const double al00 = a00 * l00 + a01 * l10, al01 = a01 * l11;
        const double al10 = a01 * l00 + a11 * l10, al11 = a11 * l11;
        const double M00 = 1.0 + (l00 * al00 + l10 * al10) * i2;
        const double M01 = (l00 * al01 + l10 * al11) * i2;
        const double M11 = 1.0 + l11 * al11 * i2;
        const double det = M00 * M11 - M01 * M01;
        prod *= det;
        if (prod > LOG_FLUSH) {
            logsum += log(prod);
            prod = 1.0;
        }
        const double idet = 1.0 / det;
        const double W00 = M11 * idet, W01 = -M01 * idet, W11 = M00 * idet;
        const double u0 = l00 * d0 + l10 * d1, u1 = l11 * d1;
        const double h0 = W00 * u0 + W01 * u1, h1 = W01 * u0 + W11 * u1;
        sum_Q += u0 * h0 + u1 * h1;
        sum_hh += h0 * h0 + h1 * h1;
        sum_trW += W00 + W11;
        const double w0 = l00 * h0, w1 = l10 * h0 + l11 * h1;
        for (int l = 0; l < p; l++) gB[l] += B[l] * w0 + B[p + l] * w1;
        const double K00 = W00 * i2 + h0 * h0 * i6;
        const double K01 = W01 * i2 + h0 * h1 * i6;
        const double K11 = W11 * i2 + h1 * h1 * i6;
        g00 += d0 * h0 * i4 - (al00 * K00 + al01 * K01);
        g10 += d1 * h0 * i4 - (al10 * K00 + al11 * K01);
        g11 += d1 * h1 * i4 - (al10 * K01 + al11 * K11);
    }
    GL[0] += g00;
    GL[2] += g10;
    GL[3] += g11;
    return assemble(x, grad, data, &s, L, sigma, logsum + log(prod), sum_Q, sum_trW, sum_hh, GL,
                    gB);
}

/* any q: M_j = R_j R_jᵀ (Cholesky), W_j = R_j⁻ᵀR_j⁻¹ (kernels.logp_grad_general) */
static double logp_grad_general(const double *x, double *grad, const double *data) {
    const layout s = get_layout(data);
    const int q = s.q, p = s.p;
    double L[q * q], GL[q * q], gB[p > 0 ? p : 1];
    double d[q], u[q], h[q], w[q], AL[q * q], M[q * q], R[q * q], Rinv[q * q], W[q * q],
        K[q * q];
    memset(GL, 0, sizeof(GL));
    memset(gB, 0, sizeof(gB));
    unpack_L(x, data, q, p, L);
    const double sigma = exp(x[p]);
    const double s2 = sigma * sigma, s4 = s2 * s2, s6 = s4 * s2;
    double sum_Q = 0.0, sum_trW = 0.0, sum_hh = 0.0, logsum = 0.0, prod = 1.0;
    for (long j = 0; j < s.J; j++) {
        const double *A = data + s.o_A + j * q * q;
        const double *B = data + s.o_B + j * q * p;
        const double *c = data + s.o_c + j * q;
        for (int k = 0; k < q; k++) {
            double t = c[k];
            for (int l = 0; l < p; l++) t -= B[k * p + l] * x[l];
            d[k] = t;
        }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) {
                double t = 0.0;
                for (int k = b; k < q; k++) t += A[a * q + k] * L[k * q + b];
                AL[a * q + b] = t;
            }
        for (int a = 0; a < q; a++) {
            double t = 0.0;
            for (int k = a; k < q; k++) t += L[k * q + a] * d[k];
            u[a] = t;
            for (int b = 0; b <= a; b++) {
                t = 0.0;
                for (int k = a; k < q; k++) t += L[k * q + a] * AL[k * q + b];
                M[a * q + b] = t / s2 + (a == b ? 1.0 : 0.0);
            }
        }
        for (int k = 0; k < q; k++) {
            double t = M[k * q + k];
            for (int l = 0; l < k; l++) t -= R[k * q + l] * R[k * q + l];
            const double r = sqrt(t);
            R[k * q + k] = r;
            prod *= t;
            if (prod > LOG_FLUSH) {
                logsum += log(prod);
                prod = 1.0;
            }
            for (int i = k + 1; i < q; i++) {
                t = M[i * q + k];
                for (int l = 0; l < k; l++) t -= R[i * q + l] * R[k * q + l];
                R[i * q + k] = t / r;
            }
        }
        for (int cc = 0; cc < q; cc++)
            for (int i = 0; i < q; i++) {
                if (i < cc) {
                    Rinv[i * q + cc] = 0.0;
                    continue;
                }
                double t = (i == cc) ? 1.0 : 0.0;
                for (int l = cc; l < i; l++) t -= R[i * q + l] * Rinv[l * q + cc];
                Rinv[i * q + cc] = t / R[i * q + i];
            }
        double trW = 0.0;
        for (int a = 0; a < q; a++) {
            for (int b = 0; b <= a; b++) {
                double t = 0.0;
                for (int k = a; k < q; k++) t += Rinv[k * q + a] * Rinv[k * q + b];
                W[a * q + b] = t;
                W[b * q + a] = t;
            }
            trW += W[a * q + a];
        }
        double Qj = 0.0, hh = 0.0;
        for (int a = 0; a < q; a++) {
            double t = 0.0;
            for (int b = 0; b < q; b++) t += W[a * q + b] * u[b];
            h[a] = t;
            Qj += u[a] * t;
            hh += t * t;
        }
        for (int a = 0; a < q; a++) {
            double t = 0.0;
            for (int k = 0; k <= a; k++) t += L[a * q + k] * h[k];
            w[a] = t;
        }
        for (int l = 0; l < p; l++) {
            double t = 0.0;
            for (int k = 0; k < q; k++) t += B[k * p + l] * w[k];
            gB[l] += t;
        }
        for (int a = 0; a < q; a++)
            for (int b = 0; b < q; b++) K[a * q + b] = W[a * q + b] / s2 + h[a] * h[b] / s6;
        for (int a = 0; a < q; a++)
            for (int b = 0; b <= a; b++) {
                double t = 0.0;
                for (int k = 0; k < q; k++) t += AL[a * q + k] * K[k * q + b];
                GL[a * q + b] += d[a] * h[b] / s4 - t;
            }
        sum_Q += Qj;
        sum_trW += trW;
        sum_hh += hh;
    }
    return assemble(x, grad, data, &s, L, sigma, logsum + log(prod), sum_Q, sum_trW, sum_hh, GL,
                    gB);
}

/* nutpie's logp callback status: 0 on success, 3 / 4 for a non-finite gradient / density */
static int64_t status(uint64_t dim, const double *grad, double lp) {
    for (uint64_t i = 0; i < dim; i++)
        if (!isfinite(grad[i])) return 3;
    return isfinite(lp) ? 0 : 4;
}

int64_t twolevel_logp_q2(uint64_t dim, const double *x, double *grad, double *logp, void *user) {
    const double lp = logp_grad_q2(x, grad, (const double *)user);
    *logp = lp;
    return status(dim, grad, lp);
}

int64_t twolevel_logp_general(uint64_t dim, const double *x, double *grad, double *logp,
                              void *user) {
    const double lp = logp_grad_general(x, grad, (const double *)user);
    *logp = lp;
    return status(dim, grad, lp);
}

/* nutpie's expand callback: the draw itself (sampler.expand_draws computes the rest) */
int64_t twolevel_copy(uint64_t dim, uint64_t n_expanded, const double *x, double *out,
                      void *user) {
    (void)n_expanded;
    (void)user;
    memcpy(out, x, sizeof(double) * dim);
    return 0;
}
