/* The thread team of sklearn_bn's compiled code: OpenMP queries that also
   compile without OpenMP, and the barrier at which the training engine's
   threads meet several times per minibatch.

   A thread that reaches the barrier early spins for a short while (the usual
   wait, when the cores are free, is a few microseconds) and then sleeps,
   giving its core away. OpenMP's own barrier spins much longer: when another
   process keeps one of the cores busy, the thread that shares that core runs
   only in time slices of a few milliseconds while its partner spins, and a
   whole epoch becomes several times slower than on one thread. Where POSIX
   threads or GCC's atomics are missing, OpenMP's barrier is used. */
#ifndef SKLEARN_BN_TEAM_H
#define SKLEARN_BN_TEAM_H

#ifdef _OPENMP
#include <omp.h>
static inline int sklearn_bn_team_size(void) { return omp_get_num_threads(); }
static inline int sklearn_bn_thread_num(void) { return omp_get_thread_num(); }
static inline int sklearn_bn_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int sklearn_bn_team_size(void) { return 1; }
static inline int sklearn_bn_thread_num(void) { return 0; }
static inline int sklearn_bn_max_threads(void) { return 1; }
#endif

#if defined(_OPENMP) && !defined(_WIN32) && defined(__GNUC__)
#include <pthread.h>
#include <time.h>

#define SKLEARN_BN_SPIN_NS 50000

typedef struct {
    int size;
    int arrived;
    unsigned int generation;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
} sklearn_bn_barrier_t;

static inline int sklearn_bn_barrier_init(sklearn_bn_barrier_t* b) {
    b->size = 1;
    b->arrived = 0;
    b->generation = 0;
    if (pthread_mutex_init(&b->mutex, NULL) != 0) return -1;
    if (pthread_cond_init(&b->cond, NULL) != 0) {
        pthread_mutex_destroy(&b->mutex);
        return -1;
    }
    return 0;
}

static inline void sklearn_bn_barrier_destroy(sklearn_bn_barrier_t* b) {
    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->mutex);
}

/* Every thread of the team calls it, with the same value, before its first
   wait: the team OpenMP gives may be smaller than the threads requested. */
static inline void sklearn_bn_barrier_join(sklearn_bn_barrier_t* b, int size) {
    __atomic_store_n(&b->size, size, __ATOMIC_RELAXED);
}

static inline long long sklearn_bn_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void sklearn_bn_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Every write a thread made before its arrival is visible to every thread
   after the barrier: arrivals are release-acquire on `arrived`, the last one
   publishes `generation` (release), which the others read with acquire (or
   under the mutex). */
static inline void sklearn_bn_barrier_wait(sklearn_bn_barrier_t* b) {
    unsigned int gen;
    long long deadline;
    int k, size = __atomic_load_n(&b->size, __ATOMIC_RELAXED);
    if (size <= 1) return;
    gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == size) {
        /* Nobody arrives again before the new generation is out. */
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        pthread_mutex_lock(&b->mutex);
        __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&b->cond);
        pthread_mutex_unlock(&b->mutex);
        return;
    }
    deadline = sklearn_bn_now_ns() + SKLEARN_BN_SPIN_NS;
    for (;;) {
        for (k = 0; k < 64; k++) {
            if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != gen) return;
            sklearn_bn_cpu_relax();
        }
        if (sklearn_bn_now_ns() > deadline) break;
    }
    pthread_mutex_lock(&b->mutex);
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen)
        pthread_cond_wait(&b->cond, &b->mutex);
    pthread_mutex_unlock(&b->mutex);
}

#else  /* OpenMP's barrier, or none without OpenMP */

typedef struct { int size; } sklearn_bn_barrier_t;

static inline int sklearn_bn_barrier_init(sklearn_bn_barrier_t* b) {
    b->size = 1;
    return 0;
}

static inline void sklearn_bn_barrier_destroy(sklearn_bn_barrier_t* b) { (void) b; }

static inline void sklearn_bn_barrier_join(sklearn_bn_barrier_t* b, int size) {
    b->size = size;  /* the same value from every thread */
}

#ifdef _OPENMP
static inline void sklearn_bn_barrier_wait(sklearn_bn_barrier_t* b) {
    if (b->size > 1) { _Pragma("omp barrier") }
}
#else
static inline void sklearn_bn_barrier_wait(sklearn_bn_barrier_t* b) { (void) b; }
#endif

#endif

#endif  /* SKLEARN_BN_TEAM_H */
