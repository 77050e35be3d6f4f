# The thread team shared by the compiled modules: OpenMP queries (valid
# outside a parallel region and without OpenMP: a team of one), the work
# queue of _team.h through which a team shares the pieces of each phase,
# and the engine's pool of threads that run a job.

cdef extern from "_team.h":
    int team_size "sklearn_bn_team_size"() noexcept nogil
    int thread_num "sklearn_bn_thread_num"() noexcept nogil
    int omp_max_threads "sklearn_bn_max_threads"() noexcept nogil
    ctypedef struct Work "sklearn_bn_work_t":
        long long phase
    int work_init "sklearn_bn_work_init"(Work* w) noexcept nogil
    void work_destroy "sklearn_bn_work_destroy"(Work* w) noexcept nogil
    long long work_claim "sklearn_bn_work_claim"(Work* w, long long phase,
                                                 long long start, long long stop,
                                                 long long prefer) noexcept nogil
    void work_done "sklearn_bn_work_done"(Work* w, long long phase) noexcept nogil
    void work_phase_end "sklearn_bn_work_phase_end"(Work* w, long long phase,
                                                    long long total) noexcept nogil
    ctypedef void (*job_fn "sklearn_bn_job_fn")(void* arg, int tid) noexcept nogil
    const int pinning_built "sklearn_bn_pinning_built"
    # Pieces one phase may have, at most (its tasks' together): the
    # engine's phases have at most two tasks of MAX_THREADS pieces, and one
    # more piece.
    const int MAX_PIECES_PER_PHASE "SKLEARN_BN_MAX_PIECES"
    void work_sleep_at_once "sklearn_bn_work_sleep_at_once"(Work* w) noexcept nogil
    int pool_run "sklearn_bn_pool_run"(int n_threads, job_fn fn, void* arg,
                                       bint pinned) noexcept nogil


cdef enum:
    # Teams larger than this are cut to it.
    MAX_THREADS = 64


cdef struct Team:
    # One thread's view of its team: the shared work queue and where this
    # thread stands in the phases (every thread goes through the same
    # phases and tasks, in the same order).
    Work* work
    int tid                      # this thread's index: it claims piece tid % n first
    int pieces                   # each task's pieces: the fixed decomposition
    long long phase              # the phase this thread is in
    long long offset             # pieces of the phase's earlier tasks
    long long held               # the piece this thread works on (-1: none)


cdef inline void team_start(Team* team, Work* work, int pieces, int tid) noexcept nogil:
    team.work = work
    team.tid = tid
    team.pieces = pieces
    team.phase = 0
    team.offset = 0
    team.held = -1


cdef inline void piece_bounds(Py_ssize_t n, Py_ssize_t align, Py_ssize_t pieces,
                              Py_ssize_t piece, Py_ssize_t* lo,
                              Py_ssize_t* hi) noexcept nogil:
    """Piece ``piece`` ``[lo, hi)`` of ``range(n)`` cut in ``pieces``
    contiguous parts whose bounds are multiples of ``align`` (so that no two
    pieces write to the same cache line); the last pieces may be empty."""
    cdef Py_ssize_t part = (n + pieces - 1) // pieces
    part = (part + align - 1) // align * align
    lo[0] = min(piece * part, n)
    hi[0] = min(lo[0] + part, n)


cdef inline bint next_piece_of(Team* team, Py_ssize_t n, Py_ssize_t align,
                               Py_ssize_t pieces, Py_ssize_t* lo,
                               Py_ssize_t* hi) noexcept nogil:
    """Mark the piece this thread held done, then claim a non-empty piece
    ``[lo, hi)`` of the current task (``range(n)`` cut in ``pieces``, see
    :func:`piece_bounds`): piece ``tid % pieces`` if it is free, else the
    next free one after it. False when the task has none left for this
    thread: the next call claims in the next task of the phase.

    Use as ``while next_piece(team, n, align, &lo, &hi): work on [lo, hi)``;
    every thread goes through every task of every phase, whether it gets a
    piece of it or not."""
    cdef long long k
    if team.held >= 0:
        work_done(team.work, team.phase)
        team.held = -1
    while True:
        k = work_claim(team.work, team.phase, team.offset, team.offset + pieces,
                       team.offset + team.tid % pieces)
        if k < 0:
            team.offset += pieces
            return False
        piece_bounds(n, align, pieces, <Py_ssize_t> (k - team.offset), lo, hi)
        if hi[0] > lo[0]:
            team.held = k
            return True
        work_done(team.work, team.phase)   # an empty piece


cdef inline bint next_piece(Team* team, Py_ssize_t n, Py_ssize_t align, Py_ssize_t* lo,
                            Py_ssize_t* hi) noexcept nogil:
    """:func:`next_piece_of` in the team's fixed number of pieces."""
    return next_piece_of(team, n, align, team.pieces, lo, hi)


cdef inline void phase_end(Team* team) noexcept nogil:
    """Wait until every piece of the current phase is done (this thread's
    are), then enter the next phase: what any piece wrote is visible."""
    work_phase_end(team.work, team.phase, team.offset)
    team.phase += 1
    team.offset = 0
