"""The thread team of the compiled modules, for the Python layer and tests.

The engine and the kernels run their threads as OpenMP teams; how many is
decided in Python (:mod:`sklearn_bn._threads`) and passed down. The team's
work queue lives in ``_team.h``.
"""
from cython.parallel cimport parallel

import numpy as np


def openmp_max_threads():
    """Threads an OpenMP team of this package may have (1 when it was built
    without OpenMP): ``OMP_NUM_THREADS`` and threadpoolctl's ``openmp``
    limits lower it."""
    return omp_max_threads()


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


cdef void _rounds(Work* work, int pieces, Py_ssize_t* slot, Py_ssize_t* times_taken,
                  Py_ssize_t* n_stale, Py_ssize_t* size, int n_rounds) noexcept nogil:
    cdef int r, task, k
    cdef Py_ssize_t lo, hi, j
    cdef Py_ssize_t* taken
    cdef Team team
    team_start(&team, work, pieces)
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
