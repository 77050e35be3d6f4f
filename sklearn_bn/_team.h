/* The thread team of sklearn_bn's compiled code: OpenMP queries that also
   compile without OpenMP, and the work queue through which the training
   engine's threads share every minibatch.

   The work of a minibatch comes in phases (the gather, each layer forward,
   the output layer, each layer backward), each made of tasks (a product and
   what follows it) cut into a fixed number of pieces: the decomposition
   depends on the shapes and that number only, never on how many threads run
   or which one takes a piece, so the results do not depend on scheduling. A
   thread claims a piece of the current task, works on it, marks it done,
   and claims again; when no piece is left in a phase it waits for the
   phase's last piece to be done. Each thread first claims the piece of its
   own index (thread t of a task of n pieces: piece t mod n), then the
   others in turn: on a quiet machine every thread takes the same piece of
   every task, so the rows it wrote in one phase stay in its core's cache
   for the next, and a piece moves to another thread only when its own is
   late. Nothing waits for a thread that holds no
   piece: a thread that the operating system has descheduled (another
   process on its core) simply takes fewer pieces, and catches up with the
   phases when it runs again.

   A thread that waits spins for a short while (the usual wait, when the
   cores are free, is a few microseconds), then yields, then sleeps, giving
   its core away: a piece holder waiting for a core gets it. OpenMP's own
   barrier spins much longer, and makes every thread wait for the slowest.
   A queue set to wait patiently (sklearn_bn_work_sleep_at_once) sleeps as
   soon as it waits: the team that keeps to its CPUs (see the pool below)
   waits that way, so that the core it leaves idle draws other work.
   Where POSIX threads or GCC's atomics are missing, OpenMP's critical
   sections and flushes stand in for the atomics, and waits only spin and
   yield. */
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

/* Pieces of one phase, at most: each has its claim word (a phase with more
   would never end: the callers keep within it). */
#define SKLEARN_BN_MAX_PIECES 1024

#if defined(_OPENMP) && !defined(_WIN32) && defined(__GNUC__)
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>

/* Spin this long before yielding, yield this long before sleeping. */
#define SKLEARN_BN_SPIN_NS 20000
#define SKLEARN_BN_YIELD_NS 50000

#define SKLEARN_BN_LINE __attribute__((aligned(64)))

typedef struct {
    /* Piece k was last claimed in phase taken[k] - 1 (0: never). */
    SKLEARN_BN_LINE long long taken[SKLEARN_BN_MAX_PIECES];
    /* Pieces done in phase g: done[g & 1]. */
    SKLEARN_BN_LINE long long done[2];
    /* Phases completed: the index of the phase under way. */
    SKLEARN_BN_LINE long long phase;
    long long advancing;   /* the phase whose end is being published */
    long long spin_ns, yield_ns;
    int sleepers;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
} sklearn_bn_work_t;

static inline int sklearn_bn_work_init(sklearn_bn_work_t* w) {
    int k;
    for (k = 0; k < SKLEARN_BN_MAX_PIECES; k++) w->taken[k] = 0;
    w->done[0] = w->done[1] = 0;
    w->phase = 0;
    w->advancing = 0;
    w->spin_ns = SKLEARN_BN_SPIN_NS;
    w->yield_ns = SKLEARN_BN_YIELD_NS;
    w->sleepers = 0;
    if (pthread_mutex_init(&w->mutex, NULL) != 0) return -1;
    if (pthread_cond_init(&w->cond, NULL) != 0) {
        pthread_mutex_destroy(&w->mutex);
        return -1;
    }
    return 0;
}

static inline void sklearn_bn_work_destroy(sklearn_bn_work_t* w) {
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->mutex);
}

/* Waits sleep at once, without spinning or yielding first. */
static inline void sklearn_bn_work_sleep_at_once(sklearn_bn_work_t* w) {
    w->spin_ns = 0;
    w->yield_ns = 0;
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

/* An unclaimed piece of phase `phase` in [start, stop) of the phase's
   pieces, `prefer` first and the next ones after it (wrapping around), or
   -1 when there is none (all claimed, or the phase is over). A thread late
   for a phase that is over finds all of that phase's pieces claimed (in
   it or after it): every piece of a phase is done before the next opens.
   The acquire pairs with the release that opened the phase. */
static inline long long sklearn_bn_work_claim(sklearn_bn_work_t* w, long long phase,
                                              long long start, long long stop,
                                              long long prefer) {
    long long i, k, seen;
    if (stop > SKLEARN_BN_MAX_PIECES) stop = SKLEARN_BN_MAX_PIECES;
    for (i = 0; i < stop - start; i++) {
        k = prefer + i;
        if (k >= stop) k -= stop - start;
        seen = __atomic_load_n(&w->taken[k], __ATOMIC_ACQUIRE);
        if (seen <= phase
            && __atomic_compare_exchange_n(&w->taken[k], &seen, phase + 1, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return k;
    }
    return -1;
}

/* A piece of phase `phase` is done: everything its thread wrote is
   published with it (the releases on done[] form one release sequence). */
static inline void sklearn_bn_work_done(sklearn_bn_work_t* w, long long phase) {
    __atomic_add_fetch(&w->done[phase & 1], 1, __ATOMIC_RELEASE);
}

/* Open phase + 1, once the `total` pieces of `phase` are done. */
static inline void sklearn_bn_work_advance(sklearn_bn_work_t* w, long long phase) {
    __atomic_store_n(&w->done[(phase + 1) & 1], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&w->phase, phase + 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&w->sleepers, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&w->mutex);
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->mutex);
    }
}

/* Whether `phase` is over; the caller that finds its `total` pieces done
   first publishes it. */
static inline int sklearn_bn_work_over(sklearn_bn_work_t* w, long long phase,
                                       long long total) {
    long long expected = phase;
    if (__atomic_load_n(&w->phase, __ATOMIC_ACQUIRE) > phase) return 1;
    if (__atomic_load_n(&w->done[phase & 1], __ATOMIC_ACQUIRE) < total) return 0;
    if (__atomic_compare_exchange_n(&w->advancing, &expected, phase + 1, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        sklearn_bn_work_advance(w, phase);
    return __atomic_load_n(&w->phase, __ATOMIC_ACQUIRE) > phase;
}

/* Wait until `phase` (of `total` pieces) is over: every write made in its
   pieces is then visible. */
static inline void sklearn_bn_work_phase_end(sklearn_bn_work_t* w, long long phase,
                                             long long total) {
    long long start, now;
    int k;
    if (sklearn_bn_work_over(w, phase, total)) return;
    start = sklearn_bn_now_ns();
    for (;;) {
        for (k = 0; k < 64; k++) {
            if (sklearn_bn_work_over(w, phase, total)) return;
            sklearn_bn_cpu_relax();
        }
        now = sklearn_bn_now_ns();
        if (now - start >= w->spin_ns + w->yield_ns) break;
        if (now - start > w->spin_ns) sched_yield();
    }
    /* Asleep, a thread only waits for the phase to be published: its last
       piece's thread publishes it (after its own last check above, every
       thread's pieces are done or held by a thread that is awake). The
       sequentially consistent pair (sleepers here, phase in advance())
       makes sure that either the publisher sees the sleeper or the sleeper
       sees the new phase. */
    pthread_mutex_lock(&w->mutex);
    __atomic_add_fetch(&w->sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&w->phase, __ATOMIC_SEQ_CST) <= phase)
        pthread_cond_wait(&w->cond, &w->mutex);
    __atomic_sub_fetch(&w->sleepers, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&w->mutex);
}


/* The engine's threads: a pool of worker threads that sleep between jobs,
   created when a job first needs them and kept for the process. A job runs
   fn(arg, tid) on the caller (tid 0) and on up to n_threads - 1 workers;
   the caller returns once every worker that took the job is done with it.
   A worker that wakes after the caller has finished does not take the
   job: a descheduled worker never holds the caller up at the start of a
   job, only (when it took the job) at its end, where the caller sleeps and
   so gives it its core. OpenMP's teams, by contrast, spin at their start
   and end (GOMP_SPINCOUNT) while waiting for every thread. One job at a
   time: a second caller meanwhile (another Python thread) runs its job on
   its own thread.

   A job may ask its threads to keep to their CPUs (`pinned`): when the job
   has one thread per CPU the caller may run on, the caller keeps to the
   CPU it is on and each worker to another one, for the job only (each
   thread's own affinity is restored when it is done with the job). Beside
   a busy process, the scheduler otherwise leaves the team's threads
   sharing one core (it balances the cores' run queue lengths, not the
   threads' shares); kept apart, a thread that waits at the end of a phase
   leaves its core idle, the busy process moves there, and the team's
   threads run side by side again. */

typedef void (*sklearn_bn_job_fn)(void* arg, int tid);

#define SKLEARN_BN_IDLE_SPIN_NS 100000
#define SKLEARN_BN_MAX_WORKERS 63

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t wake;         /* workers wait for a job */
    pthread_cond_t finished;     /* the caller waits for the job's workers */
    int n_workers;
    int busy;                    /* a caller's job is under way */
    unsigned long long posted;   /* jobs posted so far */
    sklearn_bn_job_fn fn;
    void* arg;
    int seats;                   /* workers the job still takes */
    int active;                  /* workers running the job */
    int caller_waiting;
    int pinned;                  /* the job's threads keep to these CPUs: */
    int cpu[SKLEARN_BN_MAX_WORKERS + 1];   /* by tid */
} sklearn_bn_pool_t;

static __attribute__((unused)) sklearn_bn_pool_t sklearn_bn_pool = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
    0, 0, 0ULL, NULL, NULL, 0, 0, 0, 0, {0}};

#if defined(__linux__) && defined(CPU_COUNT)
#define SKLEARN_BN_PINNING 1
/* Linux's sched_{get,set}affinity with pid 0 act on the calling thread. */

/* Keep the calling thread on `cpu`. False when the system refuses (the
   thread then runs as it did). */
static inline int sklearn_bn_keep_to(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return sched_setaffinity(0, sizeof(cpu_set_t), &one) == 0;
}

/* sklearn_bn_keep_to, the thread's affinity saved in `saved` first. */
static inline int sklearn_bn_pin(int cpu, cpu_set_t* saved) {
    return sched_getaffinity(0, sizeof(cpu_set_t), saved) == 0
           && sklearn_bn_keep_to(cpu);
}

/* Give the calling thread its saved affinity back, unless someone else
   (taskset -a, the user's code) set another one meanwhile: that one
   stays. */
static inline void sklearn_bn_unpin(int cpu, const cpu_set_t* saved) {
    cpu_set_t now;
    if (sched_getaffinity(0, sizeof(cpu_set_t), &now) != 0
        || (CPU_COUNT(&now) == 1 && CPU_ISSET(cpu, &now)))
        sched_setaffinity(0, sizeof(cpu_set_t), saved);
}

/* The CPUs of a job of `n_threads` threads that keep to their CPUs, in
   pool->cpu (the caller's first), when the caller may run on exactly
   `n_threads` CPUs; the caller is then kept to its CPU (its affinity saved
   in `saved`). Returns whether it is. */
static int sklearn_bn_pool_pin_caller(sklearn_bn_pool_t* p, int n_threads,
                                      cpu_set_t* saved) {
    int here, cpu, tid = 1;
    if (sched_getaffinity(0, sizeof(cpu_set_t), saved) != 0
        || CPU_COUNT(saved) != n_threads)
        return 0;
    here = sched_getcpu();
    if (here < 0 || here >= CPU_SETSIZE || !CPU_ISSET(here, saved)) return 0;
    p->cpu[0] = here;
    for (cpu = 0; cpu < CPU_SETSIZE && tid < n_threads; cpu++)
        if (cpu != here && CPU_ISSET(cpu, saved)) p->cpu[tid++] = cpu;
    return sklearn_bn_keep_to(here);
}
#endif

static __attribute__((unused)) void sklearn_bn_pool_after_fork(void) {
    /* The child has none of the parent's workers. */
    pthread_mutex_init(&sklearn_bn_pool.mutex, NULL);
    pthread_cond_init(&sklearn_bn_pool.wake, NULL);
    pthread_cond_init(&sklearn_bn_pool.finished, NULL);
    sklearn_bn_pool.n_workers = 0;
    sklearn_bn_pool.busy = 0;
    sklearn_bn_pool.seats = 0;
    sklearn_bn_pool.active = 0;
    sklearn_bn_pool.caller_waiting = 0;
}

static __attribute__((unused)) void* sklearn_bn_worker(void* unused) {
    sklearn_bn_pool_t* p = &sklearn_bn_pool;
    unsigned long long seen;
    long long start;
    int tid;
    (void) unused;
    pthread_mutex_lock(&p->mutex);
    seen = p->posted - 1;   /* created for the job just posted */
    for (;;) {
        if (p->posted == seen) {
            /* Jobs come in runs (an epoch's calls): wait a little awake. */
            pthread_mutex_unlock(&p->mutex);
            start = sklearn_bn_now_ns();
            while (__atomic_load_n(&p->posted, __ATOMIC_ACQUIRE) == seen
                   && sklearn_bn_now_ns() - start < SKLEARN_BN_IDLE_SPIN_NS) {
                int k;
                for (k = 0; k < 64; k++) sklearn_bn_cpu_relax();
            }
            pthread_mutex_lock(&p->mutex);
            while (p->posted == seen) pthread_cond_wait(&p->wake, &p->mutex);
        }
        seen = p->posted;
        if (p->seats > 0) {
            sklearn_bn_job_fn fn = p->fn;
            void* arg = p->arg;
            int pinned = p->pinned;
#ifdef SKLEARN_BN_PINNING
            cpu_set_t saved;
            int cpu = 0;
#endif
            tid = p->seats--;
            /* Atomic although under the mutex: the caller reads it without
               the mutex while it spins (every other access holds it). */
            __atomic_add_fetch(&p->active, 1, __ATOMIC_RELAXED);
#ifdef SKLEARN_BN_PINNING
            if (pinned) {
                cpu = p->cpu[tid];
                pthread_mutex_unlock(&p->mutex);
                pinned = sklearn_bn_pin(cpu, &saved);
            } else
#endif
                pthread_mutex_unlock(&p->mutex);
            fn(arg, tid);
#ifdef SKLEARN_BN_PINNING
            if (pinned) sklearn_bn_unpin(cpu, &saved);
#endif
            (void) pinned;
            pthread_mutex_lock(&p->mutex);
            if (__atomic_sub_fetch(&p->active, 1, __ATOMIC_RELEASE) == 0
                && p->caller_waiting)
                pthread_cond_signal(&p->finished);
        }
    }
    return NULL;
}

/* Workers created so far, up to `wanted` (fewer if the system refuses).
   Called with the mutex held. They block every signal: Ctrl-C goes to the
   caller's threads. */
static __attribute__((unused)) int sklearn_bn_pool_grow(int wanted) {
    sklearn_bn_pool_t* p = &sklearn_bn_pool;
    static int registered = 0;
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, old;
    if (wanted > SKLEARN_BN_MAX_WORKERS) wanted = SKLEARN_BN_MAX_WORKERS;
    if (p->n_workers >= wanted) return p->n_workers;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, sklearn_bn_pool_after_fork) != 0) return p->n_workers;
        registered = 1;
    }
    if (pthread_attr_init(&attr) != 0) return p->n_workers;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (p->n_workers < wanted) {
        if (pthread_create(&thread, &attr, sklearn_bn_worker, NULL) != 0) break;
        p->n_workers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return p->n_workers;
}

/* Run fn(arg, tid) on the caller (tid 0) and on up to n_threads - 1
   workers (tids 1..), kept to their CPUs if `pinned` and possible (see
   above); return the number of threads the job could have had (workers
   may also not take it). */
static __attribute__((unused)) int sklearn_bn_pool_run(int n_threads, sklearn_bn_job_fn fn,
                                                       void* arg, int pinned) {
    sklearn_bn_pool_t* p = &sklearn_bn_pool;
    long long start;
    int seats = 0, caller_pinned = 0;
#ifdef SKLEARN_BN_PINNING
    cpu_set_t saved;
    int caller_cpu = 0;
#endif
    if (n_threads > 1) {
        pthread_mutex_lock(&p->mutex);
        if (!p->busy) {
            int n_workers = sklearn_bn_pool_grow(n_threads - 1);
            seats = n_threads - 1 < n_workers ? n_threads - 1 : n_workers;
        }
        if (seats > 0) {
            p->busy = 1;
            p->fn = fn;
            p->arg = arg;
            p->seats = seats;
#ifdef SKLEARN_BN_PINNING
            if (pinned) {
                caller_pinned = sklearn_bn_pool_pin_caller(p, seats + 1, &saved);
                caller_cpu = p->cpu[0];
            }
#endif
            p->pinned = caller_pinned;
            __atomic_add_fetch(&p->posted, 1ULL, __ATOMIC_RELEASE);
            pthread_cond_broadcast(&p->wake);
        }
        pthread_mutex_unlock(&p->mutex);
    }
    fn(arg, 0);
#ifdef SKLEARN_BN_PINNING
    if (caller_pinned) sklearn_bn_unpin(caller_cpu, &saved);
#endif
    (void) pinned;
    (void) caller_pinned;
    if (seats == 0) return 1;
    pthread_mutex_lock(&p->mutex);
    p->seats = 0;   /* a worker that wakes now does not take the job */
    if (p->active > 0) {
        /* Those still on it are about to finish their last piece, or
           descheduled: spin briefly, then sleep and give them the core. */
        pthread_mutex_unlock(&p->mutex);
        start = sklearn_bn_now_ns();
        while (__atomic_load_n(&p->active, __ATOMIC_ACQUIRE) > 0
               && sklearn_bn_now_ns() - start < SKLEARN_BN_SPIN_NS) {
            int k;
            for (k = 0; k < 64; k++) sklearn_bn_cpu_relax();
        }
        pthread_mutex_lock(&p->mutex);
        p->caller_waiting = 1;
        while (p->active > 0) pthread_cond_wait(&p->finished, &p->mutex);
        p->caller_waiting = 0;
    }
    p->busy = 0;
    pthread_mutex_unlock(&p->mutex);
    return seats + 1;
}

#else  /* OpenMP's critical sections and flushes, or one thread without OpenMP */

typedef struct {
    long long taken[SKLEARN_BN_MAX_PIECES];
    long long done[2];
    long long phase;
    long long advancing;
} sklearn_bn_work_t;

static inline int sklearn_bn_work_init(sklearn_bn_work_t* w) {
    int k;
    for (k = 0; k < SKLEARN_BN_MAX_PIECES; k++) w->taken[k] = 0;
    w->done[0] = w->done[1] = 0;
    w->phase = 0;
    w->advancing = 0;
    return 0;
}

static inline void sklearn_bn_work_destroy(sklearn_bn_work_t* w) { (void) w; }

static inline void sklearn_bn_work_sleep_at_once(sklearn_bn_work_t* w) { (void) w; }

static inline long long sklearn_bn_work_claim(sklearn_bn_work_t* w, long long phase,
                                              long long start, long long stop,
                                              long long prefer) {
    long long i, k, claimed = -1;
    if (stop > SKLEARN_BN_MAX_PIECES) stop = SKLEARN_BN_MAX_PIECES;
#ifdef _OPENMP
#pragma omp critical(sklearn_bn_work)
#endif
    {
        for (i = 0; i < stop - start && claimed < 0; i++) {
            k = prefer + i;
            if (k >= stop) k -= stop - start;
            if (w->taken[k] <= phase) {
                w->taken[k] = phase + 1;
                claimed = k;
            }
        }
    }
    return claimed;
}

static inline void sklearn_bn_work_done(sklearn_bn_work_t* w, long long phase) {
#ifdef _OPENMP
#pragma omp critical(sklearn_bn_work)
#endif
    w->done[phase & 1] += 1;
}

static inline int sklearn_bn_work_over(sklearn_bn_work_t* w, long long phase,
                                       long long total) {
    int over = 0;
#ifdef _OPENMP
#pragma omp critical(sklearn_bn_work)
#endif
    {
        if (w->phase > phase) {
            over = 1;
        } else if (w->done[phase & 1] >= total) {
            w->done[(phase + 1) & 1] = 0;
            w->phase = phase + 1;
            over = 1;
        }
    }
    return over;
}

static inline void sklearn_bn_work_phase_end(sklearn_bn_work_t* w, long long phase,
                                             long long total) {
    while (!sklearn_bn_work_over(w, phase, total)) {
#ifdef _OPENMP
#pragma omp taskyield
#endif
    }
}

/* Without POSIX threads: an OpenMP team, or the caller alone. */
typedef void (*sklearn_bn_job_fn)(void* arg, int tid);

static int sklearn_bn_pool_run(int n_threads, sklearn_bn_job_fn fn, void* arg,
                               int pinned) {
#ifdef _OPENMP
    int size = 1;
    if (n_threads > 1) {
#pragma omp parallel num_threads(n_threads)
        {
#pragma omp single
            size = omp_get_num_threads();
            fn(arg, omp_get_thread_num());
        }
        return size;
    }
#endif
    (void) pinned;
    fn(arg, 0);
    return 1;
}

#endif

#ifdef SKLEARN_BN_PINNING
static const int sklearn_bn_pinning_built = 1;
#else
static const int sklearn_bn_pinning_built = 0;
#endif

#endif  /* SKLEARN_BN_TEAM_H */
