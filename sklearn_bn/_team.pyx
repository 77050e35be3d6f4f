"""The thread team of the compiled modules, for the Python layer and tests.

The engine and the kernels run their threads as OpenMP teams; how many is
decided in Python (:mod:`sklearn_bn._threads`) and passed down. The team's
barrier lives in ``_team.h``.
"""
from cython.parallel cimport parallel

import numpy as np


def openmp_max_threads():
    """Threads an OpenMP team of this package may have (1 when it was built
    without OpenMP): ``OMP_NUM_THREADS`` and threadpoolctl's ``openmp``
    limits lower it."""
    return omp_max_threads()


def barrier_check(int n_threads, int n_rounds):
    """Run ``n_rounds`` rounds of the barrier on a team of ``n_threads``.

    In each round every thread writes the round number to its own slot,
    waits at the barrier, then reads every other thread's slot: all of them
    must already show this round (every write made before the barrier is
    visible after it), and no thread may start the next round's write before
    the others have read (a second wait). Returns the team's size and the
    number of stale reads (0 when the barrier works).
    """
    if n_threads < 1 or n_threads > MAX_THREADS or n_rounds < 0:
        raise ValueError("need 1 <= n_threads <= 64 and n_rounds >= 0")
    slots = np.full(MAX_THREADS, -1, dtype=np.intp)
    stale = np.zeros(MAX_THREADS, dtype=np.intp)
    sizes = np.zeros(MAX_THREADS, dtype=np.intp)
    cdef Py_ssize_t[::1] slot = slots
    cdef Py_ssize_t[::1] n_stale = stale
    cdef Py_ssize_t[::1] size = sizes
    cdef Barrier barrier
    if barrier_init(&barrier) != 0:
        raise MemoryError("could not create the barrier")
    with nogil, parallel(num_threads=n_threads):
        _rounds(&barrier, &slot[0], &n_stale[0], &size[0], n_rounds)
    barrier_destroy(&barrier)
    return int(sizes[0]), int(stale.sum())


cdef void _rounds(Barrier* barrier, Py_ssize_t* slot, Py_ssize_t* n_stale,
                  Py_ssize_t* size, int n_rounds) noexcept nogil:
    cdef int tid = thread_num(), n = team_size(), r, k
    barrier_join(barrier, n)
    size[tid] = n
    for r in range(n_rounds):
        slot[tid] = r
        barrier_wait(barrier)
        for k in range(n):
            if slot[k] != r:
                n_stale[tid] += 1
        barrier_wait(barrier)
