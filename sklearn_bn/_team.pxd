# The thread team shared by the compiled modules: OpenMP queries (valid
# outside a parallel region and without OpenMP: a team of one), the barrier
# of _team.h, and how a team shares a range of work.

cdef extern from "_team.h":
    int team_size "sklearn_bn_team_size"() noexcept nogil
    int thread_num "sklearn_bn_thread_num"() noexcept nogil
    int omp_max_threads "sklearn_bn_max_threads"() noexcept nogil
    ctypedef struct Barrier "sklearn_bn_barrier_t":
        int size
    int barrier_init "sklearn_bn_barrier_init"(Barrier* b) noexcept nogil
    void barrier_join "sklearn_bn_barrier_join"(Barrier* b, int size) noexcept nogil
    void barrier_destroy "sklearn_bn_barrier_destroy"(Barrier* b) noexcept nogil
    void barrier_wait "sklearn_bn_barrier_wait"(Barrier* b) noexcept nogil


cdef enum:
    # Teams larger than this are cut to it.
    MAX_THREADS = 64


cdef struct Team:
    int tid                      # this thread, from 0
    int size                     # threads sharing the work
    Barrier* barrier             # shared by the team


cdef inline void share(Py_ssize_t n, Py_ssize_t align, const Team* team,
                       Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """This thread's part ``[lo, hi)`` of ``range(n)``: contiguous parts whose
    bounds are multiples of ``align`` (so that threads do not write to the
    same cache line); the last threads may get nothing."""
    cdef Py_ssize_t part = (n + team.size - 1) // team.size
    part = (part + align - 1) // align * align
    lo[0] = min(team.tid * part, n)
    hi[0] = min(lo[0] + part, n)
