"""The thread team of the compiled modules, for the Python layer and tests.

The training engine runs ``_team.h``'s pool of POSIX threads, prediction
and the scaler's kernels OpenMP teams; how many threads is decided in Python
(:mod:`sklearn_bn._threads`) and passed down. The team's work queue lives in
``_team.h``.
"""
from cython.parallel cimport parallel

import numpy as np


def openmp_max_threads():
    """Threads an OpenMP team of this package may have (1 when it was built
    without OpenMP): ``OMP_NUM_THREADS`` and threadpoolctl's ``openmp``
    limits lower it."""
    return omp_max_threads()


def pinning_available():
    """Whether the engine's pool can keep its threads to CPUs (Linux)."""
    return bool(pinning_built)


def work_check(int n_threads, int pieces, int n_phases):
    """Run ``n_phases`` rounds of phases on a team of ``n_threads``: a phase
    of two tasks of ``pieces`` pieces that write, then a phase of ``pieces``
    pieces that read.

    Each writing piece writes the round's number to its own slot; each
    reading piece reads every slot: all must show this round (every write
    made in a piece is visible after its phase, whichever thread reads), and
    each piece must have been taken exactly once. Returns the largest team
    size seen, the number of stale reads and the number of pieces taken other
    than once (both 0 when the queue works).
    """
    if n_threads < 1 or n_threads > MAX_THREADS or pieces < 1 or n_phases < 0:
        raise ValueError("need 1 <= n_threads <= 64, pieces >= 1 and n_phases >= 0")
    if 2 * pieces > MAX_PIECES_PER_PHASE:
        raise ValueError(
            f"a phase has at most {MAX_PIECES_PER_PHASE} pieces, got 2 x {pieces}")
    slots = np.full(2 * pieces, -1, dtype=np.intp)
    taken = np.zeros((max(n_phases, 1), 3 * pieces), dtype=np.intp)
    stale = np.zeros(max(n_phases, 1), dtype=np.intp)
    sizes = np.zeros(MAX_THREADS, dtype=np.intp)
    cdef Py_ssize_t[::1] slot = slots
    cdef Py_ssize_t[:, ::1] times_taken = taken
    cdef Py_ssize_t[::1] n_stale = stale
    cdef Py_ssize_t[::1] size = sizes
    cdef Work work
    if work_init(&work) != 0:
        raise MemoryError("could not create the work queue")
    with nogil, parallel(num_threads=n_threads):
        _rounds(&work, pieces, &slot[0], &times_taken[0, 0], &n_stale[0], &size[0],
                n_phases)
    work_destroy(&work)
    not_once = int(np.count_nonzero(taken[:n_phases] != 1))
    return int(sizes.max()), int(stale.sum()), not_once


def claim_order(int pieces, int tid, int n_tasks=1, int n_phases=1):
    """The pieces one thread of index ``tid`` claims, alone, in ``n_phases``
    phases of ``n_tasks`` tasks of ``pieces`` pieces: a list per task, its
    piece indices in the order claimed."""
    if pieces < 1 or tid < 0 or n_tasks < 1 or n_phases < 1:
        raise ValueError("need pieces, n_tasks, n_phases >= 1 and tid >= 0")
    if n_tasks * pieces > MAX_PIECES_PER_PHASE:
        raise ValueError(f"a phase has at most {MAX_PIECES_PER_PHASE} pieces, got "
                         f"{n_tasks} x {pieces}")
    cdef Work work
    cdef Team team
    cdef Py_ssize_t lo, hi
    cdef int _phase, _task
    if work_init(&work) != 0:
        raise MemoryError("could not create the work queue")
    team_start(&team, &work, pieces, tid)
    order = []
    for _phase in range(n_phases):
        for _task in range(n_tasks):
            claimed = []
            while next_piece(&team, pieces, 1, &lo, &hi):
                claimed.append(lo)
            order.append(claimed)
        phase_end(&team)
    work_destroy(&work)
    return order


cdef void _rounds(Work* work, int pieces, Py_ssize_t* slot, Py_ssize_t* times_taken,
                  Py_ssize_t* n_stale, Py_ssize_t* size, int n_rounds) noexcept nogil:
    cdef int r, task, k
    cdef Py_ssize_t lo, hi, j
    cdef Py_ssize_t* taken
    cdef Team team
    team_start(&team, work, pieces, thread_num())
    size[thread_num()] = team_size()
    for r in range(n_rounds):
        taken = times_taken + r * 3 * pieces
        for task in range(2):
            while next_piece(&team, pieces, 1, &lo, &hi):
                for k in range(lo, hi):
                    slot[task * pieces + k] = r
                    count_once(&taken[task * pieces + k])
        phase_end(&team)
        while next_piece(&team, pieces, 1, &lo, &hi):
            for k in range(lo, hi):
                count_once(&taken[2 * pieces + k])
                for j in range(2 * pieces):
                    if slot[j] != r:
                        count_once(&n_stale[r])
        phase_end(&team)


cdef extern from *:
    """
    static inline void sklearn_bn_count_once(Py_ssize_t* p) {
    #ifdef _OPENMP
    #pragma omp atomic
    #endif
        *p += 1;
    }
    """
    void count_once "sklearn_bn_count_once"(Py_ssize_t* p) noexcept nogil


def job_affinities(int n_threads, bint pinned, int move_caller_to=-1):
    """Run a job on this module's pool of threads (``_team.h``) and report,
    for each thread that took it, the CPU it ran on and how many CPUs it was
    allowed while it ran (0 where the system does not say): a list of
    ``(tid, cpu, n_allowed)``, the caller's first. With ``move_caller_to``
    a CPU, the caller then sets its own affinity to that CPU, as another
    program could during a job. For tests of the pool's pinning."""
    if n_threads < 1 or n_threads > MAX_THREADS:
        raise ValueError("need 1 <= n_threads <= 64")
    seen = np.full((n_threads, 2), -1, dtype=np.intp)
    cdef Py_ssize_t[:, ::1] where = seen
    cdef Report report
    report.where = &where[0, 0]
    report.n_threads = n_threads
    report.move_caller_to = move_caller_to
    with nogil:
        pool_run(n_threads, _report_affinity, &report, pinned)
    return [(tid, int(cpu), int(count)) for tid, (cpu, count) in enumerate(seen)
            if cpu >= 0]


cdef struct Report:
    Py_ssize_t* where
    int n_threads
    int move_caller_to


cdef void _report_affinity(void* arg, int tid) noexcept nogil:
    # The caller waits (up to a second) for every thread to take the job,
    # so that each reports while the job runs.
    cdef Report* report = <Report*> arg
    report.where[2 * tid + 1] = allowed_cpus()
    publish(&report.where[2 * tid], max(current_cpu(), 0))
    if tid == 0:
        wait_for_reports(report.where, report.n_threads, 1000000000)
        if report.move_caller_to >= 0:
            keep_to_cpu(report.move_caller_to)


cdef extern from *:
    """
    #ifdef SKLEARN_BN_PINNING
    static inline void sklearn_bn_keep_to_cpu(int cpu) { sklearn_bn_keep_to(cpu); }
    static inline int sklearn_bn_current_cpu(void) { return sched_getcpu(); }
    static inline int sklearn_bn_allowed_cpus(void) {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(cpu_set_t), &set) != 0) return 0;
        return CPU_COUNT(&set);
    }
    #else
    static inline void sklearn_bn_keep_to_cpu(int cpu) { (void) cpu; }
    static inline int sklearn_bn_current_cpu(void) { return 0; }
    static inline int sklearn_bn_allowed_cpus(void) { return 0; }
    #endif
    #if defined(__GNUC__)
    static inline void sklearn_bn_publish(Py_ssize_t* p, Py_ssize_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline Py_ssize_t sklearn_bn_read(Py_ssize_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    #else
    static inline void sklearn_bn_publish(Py_ssize_t* p, Py_ssize_t v) { *p = v; }
    static inline Py_ssize_t sklearn_bn_read(Py_ssize_t* p) {
        return *(volatile Py_ssize_t*) p;
    }
    #endif
    static void sklearn_bn_wait_for_reports(Py_ssize_t* where, int n, long long ns) {
    #ifdef SKLEARN_BN_IDLE_SPIN_NS   /* the pool of POSIX threads */
        long long start = sklearn_bn_now_ns();
        int k;
        for (;;) {
            for (k = 0; k < n && sklearn_bn_read(&where[2 * k]) >= 0; k++) {}
            if (k == n || sklearn_bn_now_ns() - start > ns) return;
        }
    #else
        (void) where; (void) n; (void) ns;
    #endif
    }
    """
    int current_cpu "sklearn_bn_current_cpu"() noexcept nogil
    int allowed_cpus "sklearn_bn_allowed_cpus"() noexcept nogil
    void keep_to_cpu "sklearn_bn_keep_to_cpu"(int cpu) noexcept nogil
    void publish "sklearn_bn_publish"(Py_ssize_t* p, Py_ssize_t v) noexcept nogil
    void wait_for_reports "sklearn_bn_wait_for_reports"(
        Py_ssize_t* where, int n, long long ns) noexcept nogil
