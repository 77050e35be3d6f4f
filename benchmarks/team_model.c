/* A stand-alone model of the engine's thread team, to measure wait designs
   beside busy processes without BLAS or the engine in the way.

   Phases of PIECES even pieces of arithmetic (PIECE_US microseconds each on
   one core) are shared by two threads that claim pieces from a counter, as
   the engine's work queue does (sklearn_bn/_team.h), and wait for the
   phase's last piece. Two designs of the wait:

   waits    the engine's: spin 20 us, yield until 70 us, then sleep on a
            condition variable until the phase is over;
   rerun    re-runnable pieces: a thread with nothing left to claim spins,
            and once the phase has waited RERUN_US for a piece that another
            thread holds, runs that piece again itself (as if into buffers of
            its own); the first thread to finish a piece marks it done, the
            other drops its result and joins the current phase.

   Each round times the same phases on one thread, then on the team; the
   program prints each round's ratio (team / one thread) and their median.

       cc -O2 -pthread benchmarks/team_model.c -o /tmp/team_model
       /tmp/team_model waits 7
       /tmp/team_model rerun 7
       python -c "while True: pass" &    # one busy neighbour, then again

   Figures: docs/performance.rst, "Threads on a busy machine". */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PIECES 2
#define PIECE_US 350.0
#define PHASES 3000
#define SPIN_NS 20000LL
#define YIELD_NS 50000LL
#define RERUN_NS 400000LL

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static double iterations_per_us;

static void work(double us) {
    volatile double x = 1.0;
    long long n = (long long) (us * iterations_per_us);
    for (long long i = 0; i < n; i++) x = x * 1.0000001 + 1e-9;
}

static void calibrate(void) {
    long long n = 50000000, t0 = now_ns();
    volatile double x = 1.0;
    for (long long i = 0; i < n; i++) x = x * 1.0000001 + 1e-9;
    iterations_per_us = n / ((now_ns() - t0) / 1000.0);
}

static int rerun_mode, n_threads;
static long long claim_, done_, phase_;
static int finished_[2][PIECES];   /* by phase parity */
static int sleepers_;
static pthread_mutex_t mutex_ = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond_ = PTHREAD_COND_INITIALIZER;

static void advance(long long ph) {
    memset(finished_[(ph + 1) & 1], 0, sizeof finished_[0]);
    __atomic_store_n(&done_, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&claim_, (ph + 1) << 24, __ATOMIC_RELEASE);
    __atomic_store_n(&phase_, ph + 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&sleepers_, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&mutex_);
        pthread_cond_broadcast(&cond_);
        pthread_mutex_unlock(&mutex_);
    }
}

/* Piece k of phase ph is finished: the first finisher counts it. */
static void finish(long long ph, int k) {
    int no = 0;
    if (__atomic_load_n(&phase_, __ATOMIC_ACQUIRE) != ph) return;
    if (!__atomic_compare_exchange_n(&finished_[ph & 1][k], &no, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return;
    if (__atomic_add_fetch(&done_, 1, __ATOMIC_ACQ_REL) == PIECES) advance(ph);
}

static void wait_phase(long long ph) {
    long long t0 = now_ns(), t;
    while (__atomic_load_n(&phase_, __ATOMIC_ACQUIRE) <= ph) {
        t = now_ns() - t0;
        if (rerun_mode) {
            if (t > RERUN_NS) {
                for (int k = 0; k < PIECES; k++) {
                    if (!__atomic_load_n(&finished_[ph & 1][k], __ATOMIC_ACQUIRE)) {
                        work(PIECE_US);
                        finish(ph, k);
                        break;
                    }
                }
                t0 = now_ns();
            }
            __builtin_ia32_pause();
        } else if (t > SPIN_NS + YIELD_NS) {
            pthread_mutex_lock(&mutex_);
            sleepers_++;
            while (__atomic_load_n(&phase_, __ATOMIC_SEQ_CST) <= ph)
                pthread_cond_wait(&cond_, &mutex_);
            sleepers_--;
            pthread_mutex_unlock(&mutex_);
        } else if (t > SPIN_NS) {
            sched_yield();
        } else {
            __builtin_ia32_pause();
        }
    }
}

static void* run(void* arg) {
    (void) arg;
    long long ph = 0;
    while (ph < PHASES) {
        for (;;) {
            long long c = __atomic_load_n(&claim_, __ATOMIC_ACQUIRE);
            long long k = c & 0xffffff;
            if ((c >> 24) != ph || k >= PIECES) break;
            if (__atomic_compare_exchange_n(&claim_, &c, c + 1, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                work(PIECE_US);
                finish(ph, (int) k);
            }
        }
        wait_phase(ph);
        ph = __atomic_load_n(&phase_, __ATOMIC_ACQUIRE);   /* skip ended phases */
    }
    return NULL;
}

static double timed(int threads) {
    pthread_t other;
    long long t0;
    n_threads = threads;
    claim_ = done_ = phase_ = 0;
    memset(finished_, 0, sizeof finished_);
    t0 = now_ns();
    if (threads == 2) pthread_create(&other, NULL, run, NULL);
    run(NULL);
    if (threads == 2) pthread_join(other, NULL);
    return (now_ns() - t0) / 1e9;
}

static int by_value(const void* a, const void* b) {
    double x = *(const double*) a, y = *(const double*) b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    double ratios[100];
    if (argc < 2 || (strcmp(argv[1], "waits") && strcmp(argv[1], "rerun")) ||
        rounds < 1 || rounds > 100) {
        fprintf(stderr, "usage: %s waits|rerun [rounds]\n", argv[0]);
        return 2;
    }
    rerun_mode = !strcmp(argv[1], "rerun");
    calibrate();
    for (int r = 0; r < rounds; r++) {
        double one = timed(1), team = timed(2);
        ratios[r] = team / one;
        printf("round %d: one thread %.3f s, team %.3f s, ratio %.3f\n", r, one, team,
               ratios[r]);
    }
    qsort(ratios, rounds, sizeof ratios[0], by_value);
    printf("%s: median team / one thread %.3f (range %.3f-%.3f)\n", argv[1],
           ratios[rounds / 2], ratios[0], ratios[rounds - 1]);
    return 0;
}
