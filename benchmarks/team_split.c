/* A stand-alone model of one minibatch step of the engine, to compare ways
   of sharing it between two threads without the engine in the way.

   The step of a 64-64-64-10 network with batch norm and ReLU, softmax and
   Adam, float64, minibatch 200 (the benchmarks' small network; -DH=256
   -DM=256 -DSTEPS=156 for the large one), 160 steps, OpenBLAS (scipy's)
   on one thread for every product, spin barriers between phases:

   one      one thread;
   cols     two threads, each hidden layer cut in two panels of columns, as
            the engine did until round 3's last stops: batch statistics are
            per column, but every layer reads the columns of the layer below
            that the other thread wrote;
   rows     two threads, each with half of the rows through every layer:
            batch statistics and batch norm's backward sums merged across
            the halves after a barrier, each half's share of the gradient
            summed in a last phase that also steps the parameters (what the
            engine does now). With a second argument, the first layer's
            coefficient gradient is summed by columns over every row
            instead.

   It checks that the three give the same parameters (to rounding), then
   times interleaved rounds and prints the medians:

       L=$(python -c "import scipy, os; print(os.path.join(os.path.dirname(scipy.__file__), '..', 'scipy.libs'))")
       cc -O3 -march=native -ffast-math -pthread benchmarks/team_split.c -o /tmp/team_split \
          $L/libscipy_openblas-*.so -Wl,-rpath,$L -lm
       /tmp/team_split 15

   Figures: docs/performance.rst, "Pieces of rows". */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };
void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double *, int,
                       const double *, int, double, double *, int);
void scipy_openblas_set_num_threads(int);

#ifndef NIN
#define NIN 64
#endif
#ifndef H
#define H 64
#endif
#define NOUT 10
#ifndef M
#define M 200
#endif
#define NDATA 1437
#ifndef STEPS
#define STEPS 160
#endif

/* flat parameter layout */
#define OW1 0
#define OG1 (OW1 + NIN * H)
#define OB1 (OG1 + H)
#define OW2 (OB1 + H)
#define OG2 (OW2 + H * H)
#define OB2 (OG2 + H)
#define OW3 (OB2 + H)
#define OB3 (OW3 + H * NOUT)
#define NP (OB3 + NOUT)

static double *X, *Xmb, *Z1, *Xh1, *A1, *Z2, *Xh2, *A2, *P, *D3, *dA2, *dZ2, *dA1, *dZ1;
static double *theta, *grad, *gpart[2], *am, *av;
static double sum1[2][H], sq1[2][H], sum2[2][H], sq2[2][H];
static double bsum[2][2][H], bdot[2][2][H];
static double mean[2][H], stdv[2][H];
static int *Y, *idx;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static atomic_int bar_count, bar_sense;
static int nthreads = 1;
static int first_by_cols = 0;
static void barrier(int *local_sense) {
    if (nthreads == 1) return;
    *local_sense = !*local_sense;
    if (atomic_fetch_add(&bar_count, 1) == nthreads - 1) {
        atomic_store(&bar_count, 0);
        atomic_store(&bar_sense, *local_sense);
    } else {
        while (atomic_load(&bar_sense) != *local_sense) _mm_pause();
    }
}

static void gemm(int ta, int tb, int m, int n, int k, const double *a, int lda,
                 const double *b, int ldb, double beta, double *c, int ldc) {
    scipy_cblas_dgemm(RowMajor, ta ? Trans : NoTrans, tb ? Trans : NoTrans, m, n, k,
                      1.0, a, lda, b, ldb, beta, c, ldc);
}

static void adam(int p0, int p1, const double *g) {
    for (int p = p0; p < p1; p++) {
        am[p] = 0.9 * am[p] + 0.1 * g[p];
        av[p] = 0.999 * av[p] + 0.001 * g[p] * g[p];
        theta[p] -= 1e-3 * am[p] / (sqrt(av[p]) + 1e-8);
    }
}

/* batch norm forward on rows [r0,r1), cols [c0,c1), given mean/std */
static void bn_apply(const double *z, double *xh, double *a, int ld, int r0, int r1,
                     int c0, int c1, const double *mu, const double *sd,
                     const double *g, const double *b) {
    double inv[H];
    for (int j = c0; j < c1; j++) inv[j] = 1.0 / sd[j];
    for (int r = r0; r < r1; r++)
        for (int j = c0; j < c1; j++) {
            double x = (z[r * ld + j] - mu[j]) * inv[j];
            xh[r * ld + j] = x;
            double y = g[j] * x + b[j];
            a[r * ld + j] = y > 0 ? y : 0;
        }
}

static void col_sums(const double *z, int ld, int r0, int r1, int c0, int c1,
                     double *s) {
    for (int j = c0; j < c1; j++) s[j] = 0;
    for (int r = r0; r < r1; r++)
        for (int j = c0; j < c1; j++) s[j] += z[r * ld + j];
}

static void col_sq(const double *z, int ld, int r0, int r1, int c0, int c1,
                   const double *mu, double *s) {
    for (int j = c0; j < c1; j++) s[j] = 0;
    for (int r = r0; r < r1; r++)
        for (int j = c0; j < c1; j++) {
            double d = z[r * ld + j] - mu[j];
            s[j] += d * d;
        }
}

/* dy = da * (a > 0) in place into da; partial sums of dy and dy * xh */
static void bn_back_sums(double *da, const double *a, const double *xh, int ld,
                         int r0, int r1, int c0, int c1, double *s, double *d) {
    for (int j = c0; j < c1; j++) s[j] = d[j] = 0;
    for (int r = r0; r < r1; r++)
        for (int j = c0; j < c1; j++) {
            double dy = a[r * ld + j] > 0 ? da[r * ld + j] : 0;
            da[r * ld + j] = dy;
            s[j] += dy;
            d[j] += dy * xh[r * ld + j];
        }
}

static void bn_back_apply(const double *dy, const double *xh, double *dz, int ld,
                          int r0, int r1, int c0, int c1, const double *s,
                          const double *d, const double *g, const double *sd) {
    double k[H], sm[H], dm[H];
    for (int j = c0; j < c1; j++) k[j] = g[j] / sd[j], sm[j] = s[j] / M, dm[j] = d[j] / M;
    for (int r = r0; r < r1; r++)
        for (int j = c0; j < c1; j++)
            dz[r * ld + j] = k[j] * (dy[r * ld + j] - sm[j] - xh[r * ld + j] * dm[j]);
}

static void output_rows(int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        double *p = P + r * NOUT, mx = -1e300, tot = 0;
        for (int j = 0; j < NOUT; j++) {
            p[j] += theta[OB3 + j];
            if (p[j] > mx) mx = p[j];
        }
        for (int j = 0; j < NOUT; j++) tot += (p[j] = exp(p[j] - mx));
        for (int j = 0; j < NOUT; j++) D3[r * NOUT + j] = (p[j] / tot - (Y[idx[r]] == j)) / M;
    }
}

static void gather(int step, int r0, int r1) {
    for (int r = r0; r < r1; r++) {
        idx[r] = (step * M + r * 7) % NDATA;
        memcpy(Xmb + r * NIN, X + idx[r] * NIN, NIN * sizeof(double));
    }
}

static void finish_mean(double s[2][H], int c0, int c1, int nparts, double *mu) {
    for (int j = c0; j < c1; j++) {
        double t = 0;
        for (int k = 0; k < nparts; k++) t += s[k][j];
        mu[j] = t / M;
    }
}

static void finish_var(double q[2][H], int c0, int c1, int nparts, double *sd) {
    for (int j = c0; j < c1; j++) {
        double t = 0;
        for (int k = 0; k < nparts; k++) t += q[k][j];
        sd[j] = sqrt(t / M + 1e-5);
    }
}

/* ---- column split (nt threads; nt == 1 is the one-thread step) ---- */
static void step_cols(int step, int t, int nt, int *sense) {
    int r0 = M * t / nt, r1 = M * (t + 1) / nt;
    int c0 = H * t / nt, c1 = H * (t + 1) / nt, w = c1 - c0;
    gather(step, r0, r1);
    barrier(sense);
    /* layer 1 */
    gemm(0, 0, M, w, NIN, Xmb, NIN, theta + OW1 + c0, H, 0, Z1 + c0, H);
    col_sums(Z1, H, 0, M, c0, c1, sum1[0]);
    finish_mean(sum1, c0, c1, 1, mean[0]);
    col_sq(Z1, H, 0, M, c0, c1, mean[0], sq1[0]);
    finish_var(sq1, c0, c1, 1, stdv[0]);
    bn_apply(Z1, Xh1, A1, H, 0, M, c0, c1, mean[0], stdv[0], theta + OG1, theta + OB1);
    barrier(sense);
    /* layer 2 */
    gemm(0, 0, M, w, H, A1, H, theta + OW2 + c0, H, 0, Z2 + c0, H);
    col_sums(Z2, H, 0, M, c0, c1, sum2[0]);
    finish_mean(sum2, c0, c1, 1, mean[1]);
    col_sq(Z2, H, 0, M, c0, c1, mean[1], sq2[0]);
    finish_var(sq2, c0, c1, 1, stdv[1]);
    bn_apply(Z2, Xh2, A2, H, 0, M, c0, c1, mean[1], stdv[1], theta + OG2, theta + OB2);
    barrier(sense);
    /* output rows */
    gemm(0, 0, r1 - r0, NOUT, H, A2 + r0 * H, H, theta + OW3, NOUT, 0, P + r0 * NOUT, NOUT);
    output_rows(r0, r1);
    barrier(sense);
    /* layer 2 backward, units c0..c1 */
    gemm(0, 1, M, w, NOUT, D3, NOUT, theta + OW3 + c0 * NOUT, NOUT, 0, dA2 + c0, H);
    gemm(1, 0, w, NOUT, M, A2 + c0, H, D3, NOUT, 0, grad + OW3 + c0 * NOUT, NOUT);
    if (t == 0) {
        for (int j = 0; j < NOUT; j++) {
            double s = 0;
            for (int r = 0; r < M; r++) s += D3[r * NOUT + j];
            grad[OB3 + j] = s;
        }
        adam(OB3, OB3 + NOUT, grad);
    }
    adam(OW3 + c0 * NOUT, OW3 + c1 * NOUT, grad);
    bn_back_sums(dA2, A2, Xh2, H, 0, M, c0, c1, bsum[0][1], bdot[0][1]);
    bn_back_apply(dA2, Xh2, dZ2, H, 0, M, c0, c1, bsum[0][1], bdot[0][1], theta + OG2, stdv[1]);
    for (int j = c0; j < c1; j++) {
        grad[OB2 + j] = bsum[0][1][j];
        grad[OG2 + j] = bdot[0][1][j];
    }
    adam(OG2 + c0, OG2 + c1, grad);
    adam(OB2 + c0, OB2 + c1, grad);
    gemm(1, 0, H, w, M, A1, H, dZ2 + c0, H, 0, grad + OW2 + c0, H);
    barrier(sense);
    /* layer 1 backward, units c0..c1 */
    gemm(0, 1, M, w, H, dZ2, H, theta + OW2 + c0 * H, H, 0, dA1 + c0, H);
    adam(OW2 + c0 * H, OW2 + c1 * H, grad); /* W2's rows c0..c1 */
    bn_back_sums(dA1, A1, Xh1, H, 0, M, c0, c1, bsum[0][0], bdot[0][0]);
    bn_back_apply(dA1, Xh1, dZ1, H, 0, M, c0, c1, bsum[0][0], bdot[0][0], theta + OG1, stdv[0]);
    for (int j = c0; j < c1; j++) {
        grad[OB1 + j] = bsum[0][0][j];
        grad[OG1 + j] = bdot[0][0][j];
    }
    adam(OG1 + c0, OG1 + c1, grad);
    adam(OB1 + c0, OB1 + c1, grad);
    gemm(1, 0, NIN, w, M, Xmb, NIN, dZ1 + c0, H, 0, grad + OW1 + c0, H);
    for (int i = 0; i < NIN; i++) adam(OW1 + i * H + c0, OW1 + i * H + c1, grad);
    barrier(sense);
}

/* ---- row split ---- */
static void step_rows(int step, int t, int nt, int *sense) {
    int r0 = M * t / nt, r1 = M * (t + 1) / nt, m = r1 - r0;
    int p0 = NP * t / nt, p1 = NP * (t + 1) / nt;
    double *g = gpart[t];
    gather(step, r0, r1);
    /* layer 1 */
    gemm(0, 0, m, H, NIN, Xmb + r0 * NIN, NIN, theta + OW1, H, 0, Z1 + r0 * H, H);
    col_sums(Z1, H, r0, r1, 0, H, sum1[t]);
    barrier(sense);
    finish_mean(sum1, 0, H, nt, mean[0]);
    col_sq(Z1, H, r0, r1, 0, H, mean[0], sq1[t]);
    barrier(sense);
    finish_var(sq1, 0, H, nt, stdv[0]);
    bn_apply(Z1, Xh1, A1, H, r0, r1, 0, H, mean[0], stdv[0], theta + OG1, theta + OB1);
    /* layer 2 */
    gemm(0, 0, m, H, H, A1 + r0 * H, H, theta + OW2, H, 0, Z2 + r0 * H, H);
    col_sums(Z2, H, r0, r1, 0, H, sum2[t]);
    barrier(sense);
    finish_mean(sum2, 0, H, nt, mean[1]);
    col_sq(Z2, H, r0, r1, 0, H, mean[1], sq2[t]);
    barrier(sense);
    finish_var(sq2, 0, H, nt, stdv[1]);
    bn_apply(Z2, Xh2, A2, H, r0, r1, 0, H, mean[1], stdv[1], theta + OG2, theta + OB2);
    /* output */
    gemm(0, 0, m, NOUT, H, A2 + r0 * H, H, theta + OW3, NOUT, 0, P + r0 * NOUT, NOUT);
    output_rows(r0, r1);
    /* backward */
    gemm(1, 0, H, NOUT, m, A2 + r0 * H, H, D3 + r0 * NOUT, NOUT, 0, g + OW3, NOUT);
    for (int j = 0; j < NOUT; j++) {
        double s = 0;
        for (int r = r0; r < r1; r++) s += D3[r * NOUT + j];
        g[OB3 + j] = s;
    }
    gemm(0, 1, m, H, NOUT, D3 + r0 * NOUT, NOUT, theta + OW3, NOUT, 0, dA2 + r0 * H, H);
    bn_back_sums(dA2, A2, Xh2, H, r0, r1, 0, H, bsum[t][1], bdot[t][1]);
    barrier(sense);
    {
        double s2[H], d2[H];
        for (int j = 0; j < H; j++) {
            double s = 0, d = 0;
            for (int k = 0; k < nt; k++) s += bsum[k][1][j], d += bdot[k][1][j];
            s2[j] = s, d2[j] = d;
            g[OB2 + j] = t == 0 ? s : 0;
            g[OG2 + j] = t == 0 ? d : 0;
        }
        bn_back_apply(dA2, Xh2, dZ2, H, r0, r1, 0, H, s2, d2, theta + OG2, stdv[1]);
    }
    gemm(1, 0, H, H, m, A1 + r0 * H, H, dZ2 + r0 * H, H, 0, g + OW2, H);
    gemm(0, 1, m, H, H, dZ2 + r0 * H, H, theta + OW2, H, 0, dA1 + r0 * H, H);
    barrier(sense); /* everyone past the layer-2 sums before they are reused */
    bn_back_sums(dA1, A1, Xh1, H, r0, r1, 0, H, bsum[t][1], bdot[t][1]);
    barrier(sense);
    {
        double s1[H], d1[H];
        for (int j = 0; j < H; j++) {
            double s = 0, d = 0;
            for (int k = 0; k < nt; k++) s += bsum[k][1][j], d += bdot[k][1][j];
            s1[j] = s, d1[j] = d;
            g[OB1 + j] = t == 0 ? s : 0;
            g[OG1 + j] = t == 0 ? d : 0;
        }
        bn_back_apply(dA1, Xh1, dZ1, H, r0, r1, 0, H, s1, d1, theta + OG1, stdv[0]);
    }
    if (first_by_cols) {
        barrier(sense);
        int c0 = H * t / nt, c1 = H * (t + 1) / nt;
        gemm(1, 0, NIN, c1 - c0, M, Xmb, NIN, dZ1 + c0, H, 0, grad + OW1 + c0, H);
        for (int i = 0; i < NIN; i++) adam(OW1 + i * H + c0, OW1 + i * H + c1, grad);
        if (p0 < OG1) p0 = OG1;
    } else
        gemm(1, 0, NIN, H, m, Xmb + r0 * NIN, NIN, dZ1 + r0 * H, H, 0, g + OW1, H);
    barrier(sense);
    /* combine the partial gradients in a fixed order, then step a slice */
    for (int p = p0; p < p1; p++) {
        double s = 0;
        for (int k = 0; k < nt; k++) s += gpart[k][p];
        grad[p] = s;
    }
    adam(p0, p1, grad);
    barrier(sense);
}

typedef void (*step_fn)(int, int, int, int *);
static step_fn worker_fn;
static atomic_int go, done;

static void *worker(void *arg) {
    (void)arg;
    int seen = 0, sense = 0;
    for (;;) {
        while (atomic_load(&go) == seen) _mm_pause();
        seen = atomic_load(&go);
        if (seen < 0) return NULL;
        for (int s = 0; s < STEPS; s++) worker_fn(s, 1, 2, &sense);
        atomic_fetch_add(&done, 1);
    }
}

static int main_sense = 0;
static double run(step_fn f, int nt) {
    memset(am, 0, NP * sizeof(double));
    memset(av, 0, NP * sizeof(double));
    long long t0 = now_ns();
    nthreads = nt;
    if (nt == 2) {
        worker_fn = f;
        int d = atomic_load(&done);
        atomic_fetch_add(&go, 1);
        for (int s = 0; s < STEPS; s++) f(s, 0, 2, &main_sense);
        while (atomic_load(&done) == d) _mm_pause();
    } else {
        int sense = 0;
        for (int s = 0; s < STEPS; s++) f(s, 0, 1, &sense);
    }
    return (now_ns() - t0) / 1e6;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 15;
    scipy_openblas_set_num_threads(1);
    double **bufs[] = {&Xmb, &Z1, &Xh1, &A1, &Z2, &Xh2, &A2, &dA2, &dZ2, &dA1, &dZ1};
    for (unsigned i = 0; i < sizeof bufs / sizeof *bufs; i++)
        *bufs[i] = aligned_alloc(64, M * H * sizeof(double) + 64 * 64 * 8);
    X = aligned_alloc(64, NDATA * NIN * sizeof(double));
    P = aligned_alloc(64, M * NOUT * sizeof(double));
    D3 = aligned_alloc(64, M * NOUT * sizeof(double));
    size_t np = (NP * sizeof(double) + 63) / 64 * 64;
    theta = aligned_alloc(64, np), grad = aligned_alloc(64, np);
    gpart[0] = aligned_alloc(64, np), gpart[1] = aligned_alloc(64, np);
    am = aligned_alloc(64, np), av = aligned_alloc(64, np);
    Y = malloc(NDATA * sizeof(int)), idx = malloc(M * sizeof(int));
    srand(1);
    for (int i = 0; i < NDATA * NIN; i++) X[i] = rand() / (double)RAND_MAX - 0.5;
    for (int i = 0; i < NDATA; i++) Y[i] = rand() % NOUT;
    for (int i = 0; i < NP; i++) theta[i] = (rand() / (double)RAND_MAX - 0.5) * 0.2;
    for (int j = 0; j < H; j++) theta[OG1 + j] = theta[OG2 + j] = 1, theta[OB1 + j] = theta[OB2 + j] = 0;
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    {
        double *t0 = malloc(NP * sizeof(double)), *ta = malloc(NP * sizeof(double));
        memcpy(t0, theta, NP * sizeof(double));
        run(step_cols, 1);
        memcpy(ta, theta, NP * sizeof(double));
        const char *names[] = {"cols x2", "rows x1", "rows x2"};
        step_fn fs[] = {step_cols, step_rows, step_rows};
        int ns[] = {2, 1, 2};
        for (int v = 0; v < 3; v++) {
            memcpy(theta, t0, NP * sizeof(double));
            run(fs[v], ns[v]);
            double mx = 0, mv = 0;
            for (int p = 0; p < NP; p++) {
                double d = fabs(theta[p] - ta[p]);
                if (d > mx) mx = d;
                if (fabs(ta[p] - t0[p]) > mv) mv = fabs(ta[p] - t0[p]);
            }
            printf("%s vs one: max |diff| %.3g (max change %.3g)\n", names[v], mx, mv);
        }
        double r1 = 0;
        for (int k = 0; k < 5; k++) r1 += run(step_rows, 1);
        double c1 = 0;
        for (int k = 0; k < 5; k++) c1 += run(step_cols, 1);
        printf("one thread: rows %.2f ms, cols %.2f ms\n", r1 / 5, c1 / 5);
        memcpy(theta, t0, NP * sizeof(double));
    }
    double rc[64], rr[64];
    double one_s[64], col_s[64], row_s[64];
    first_by_cols = argc > 2;
    for (int k = 0; k < rounds; k++) {
        double one = run(step_cols, 1);
        double col = run(step_cols, 2);
        double one2 = run(step_cols, 1);
        double row = run(step_rows, 2);
        one = (one + one2) / 2;
        rc[k] = col / one, rr[k] = row / one;
        one_s[k] = one, col_s[k] = col, row_s[k] = row;
    }
    qsort(rc, rounds, sizeof(double), cmp);
    qsort(rr, rounds, sizeof(double), cmp);
    qsort(one_s, rounds, sizeof(double), cmp);
    qsort(col_s, rounds, sizeof(double), cmp);
    qsort(row_s, rounds, sizeof(double), cmp);
    printf("NIN=%d H=%d M=%d steps=%d: one %.2f ms, cols %.2f ms, rows %.2f ms\n", NIN, H, M,
           STEPS, one_s[rounds / 2], col_s[rounds / 2], row_s[rounds / 2]);
    printf("cols/one %.2f (%.2f-%.2f)  rows/one %.2f (%.2f-%.2f)\n", rc[rounds / 2], rc[0],
           rc[rounds - 1], rr[rounds / 2], rr[0], rr[rounds - 1]);
    atomic_store(&go, -1);
    return 0;
}
