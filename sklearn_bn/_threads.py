"""How many threads the package's compiled code runs, in one place.

Every parallel kernel of the package runs a team whose size is decided here
and passed down explicitly (the training engine's team is ``_team.h``'s pool
of POSIX threads, prediction's and the scaler's are OpenMP teams):

* the training engine (:func:`training_threads`) and the prediction of a
  large batch (:func:`prediction_threads`) replace BLAS's threads with their
  own: each of their threads calls BLAS on its own share of every product,
  with BLAS limited to one thread meanwhile (as scikit-learn's KMeans does);
* the scaler's kernels (:func:`kernel_threads`) share row blocks of the data.

The package may use as many threads as its OpenMP runtime allows
(``OMP_NUM_THREADS``, threadpoolctl's ``openmp`` limits of the calling
thread) and as the process may run on (its CPU affinity and its cgroup CPU
quota, which :func:`joblib.cpu_count` reads); the engine and the
prediction also stay within BLAS's threadpoolctl limit, since their threads
stand in for BLAS's. Work too
small to pay for a team runs on the calling thread. Teams running at the
same time in several Python threads share the cores: a new team gets the
cores that the running ones leave, and at least one.

BLAS's limit is process-wide (OpenBLAS's pthreads pool, MKL, BLIS), so one
object, :data:`_BLAS_OWNER`, owns the package's limit of one BLAS thread:
the first call that needs it sets it, the last one out restores exactly the
limits it found, and calls in between, in any thread, change nothing. It
never keeps threadpoolctl's "controlling thread" of OpenBLAS (threadpoolctl
3.8 lets only that thread set OpenBLAS's limit): the limits a user sets in
any thread keep working after any call of the package.

A process forked from one that has run an OpenMP team of this package
cannot start another (GNU OpenMP's threads do not survive ``fork()``: the
next team would wait forever for them), so such a child runs prediction and
the scaler's kernels on the calling thread; a child of a process that never
ran a team keeps its threads. The engine's pool starts afresh in a child:
training keeps its team.

An OpenBLAS built on OpenMP threads (one of conda-forge's variants; numpy's
and scipy's wheels use pthreads) keeps its limit per thread, as OpenMP does:
the limit of 1 set here holds in the calling thread only, and the engine's
threads may each run BLAS's full count. This module assumes a process-wide
limit.
"""

import contextlib
import math
import os
import statistics
import threading
import types
from collections.abc import Mapping
from typing import NamedTuple

import joblib
import threadpoolctl
from threadpoolctl import ThreadpoolController

from sklearn_bn._team import openmp_max_threads, pinning_available
from sklearn_bn._utils import deferred_interrupt

# Below this many multiply-adds per minibatch (in the matrix products), the
# team's barriers cost about what sharing the work saves.
MIN_MULTIPLY_ADDS_FOR_THREADS = 1 << 16

# Below this many multiply-adds per minibatch, the team's threads are not
# kept to their CPUs (the pinned way of _TeamPace): its waits sleep at
# once, and a smaller minibatch's pieces are too short to sleep and wake
# in: bench_contention.py's small network (1.8e6) runs slowest that way,
# quiet or beside a busy process, its large one (2.2e7) gains from it (the
# performance page's "How the team runs").
MIN_MULTIPLY_ADDS_FOR_PINNING = 1 << 23

# Elements per row block of the scaler's kernels: a block is worth a thread.
ELEMENTS_PER_BLOCK = 1 << 20

# OpenBLAS runs a product on one thread below this many multiply-adds
# (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD in its sources).
BLAS_THREADING_MULTIPLY_ADDS = 1 << 18

# Multiply-adds a prediction thread must get for the team to pay.
MIN_MULTIPLY_ADDS_PER_PREDICTION_THREAD = 1 << 22

# The compiled team's limits (_team.pxd): threads, and pieces per task.
MAX_THREADS = 64
MAX_PIECES = 64


class TeamSize(NamedTuple):
    """The engine's team: the pieces every task of a minibatch is cut in
    (the results depend on it), and the threads that take them (at most as
    many; the results do not depend on it)."""

    pieces: int
    threads: int


class _ProcessState:
    """What this process knows of itself: whether it has run an OpenMP team,
    and whether it was forked from one that had."""

    ran_team = False
    team_unsafe = False
    forks = 0  # how many times this process's ancestry forked into it


def _after_fork_in_child():
    _ProcessState.team_unsafe = _ProcessState.team_unsafe or _ProcessState.ran_team
    _ProcessState.forks += 1
    _BLAS_OWNER._after_fork_in_child()
    _TEAMS._after_fork_in_child()
    TEAM_PACE._after_fork_in_child()


def _mark_team_started(n_threads):
    if n_threads > 1:
        _ProcessState.ran_team = True
    return n_threads


def _cpu_affinity():
    """The CPUs the calling thread may run on, where the system says."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def usable_cores():
    """The cores this process may run on now: its CPU affinity and its
    cgroup CPU quota, as ``joblib.cpu_count()`` reads them. That takes
    about 30 microseconds, so it is read once per call that may start a
    team (a fit, a prediction, a kernel of more than one block), whose work
    takes milliseconds; an affinity or a quota changed between two calls
    counts at the next one."""
    return max(1, int(joblib.cpu_count()))


def engine_threads():
    """Threads the training engine may run from the calling thread: the
    OpenMP limit within the usable cores. The engine's threads are its own
    (``_team.h``'s pool, which a forked child starts afresh)."""
    return max(1, min(openmp_max_threads(), usable_cores()))


def max_threads():
    """Threads the package's OpenMP teams (prediction, the scaler's kernels)
    may run from the calling thread: :func:`engine_threads`, 1 in a child
    forked after an OpenMP team ran."""
    if _ProcessState.team_unsafe:
        return 1
    return engine_threads()


def kernel_threads(n_rows, n_cols):
    """Row blocks and threads for a kernel streaming an ``(n_rows, n_cols)``
    array: ``(block_rows, n_threads)``.

    The blocks depend on the shape only (about ``ELEMENTS_PER_BLOCK``
    elements each), so a result does not depend on the number of threads.
    """
    block_rows = max(1, ELEMENTS_PER_BLOCK // max(n_cols, 1))
    n_blocks = -(-n_rows // block_rows) if n_rows else 1
    if n_blocks == 1:
        return block_rows, 1
    return block_rows, _mark_team_started(max(1, min(max_threads(), n_blocks)))


# ---------------------------------------------------------------------------
# BLAS's limit, owned once per process


def _blas_controllers():
    return _threadpool_controller().select(user_api="blas").lib_controllers


_CONTROLLER = None


def _threadpool_controller():
    """One ``ThreadpoolController`` per process: finding the libraries takes
    tens of milliseconds, reading or setting their limits microseconds."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _set_blas_threads(lib, n_threads):
    """Set one BLAS library's limit without keeping the right to set it.

    threadpoolctl >= 3.8 makes the first thread that sets OpenBLAS's
    (process-wide) limit its controlling thread, and ignores the other
    threads' limits until that thread leaves a ``threadpool_limits`` block.
    Outside such a block of its own, the calling thread gives that role up
    again at once.
    """
    lib.set_num_threads(n_threads)
    ownership = getattr(threadpoolctl, "CONTROLLING_THREAD_OWNERSHIP", None)
    openblas = getattr(threadpoolctl, "OpenBLASController", None)
    if (
        ownership is not None
        and ownership.count <= 0
        and hasattr(openblas, "clear_controlling_thread")
    ):
        openblas.clear_controlling_thread()


class _BlasOwner:
    """The package's one limit of one BLAS thread, shared by every call
    that needs it (in any thread) while at least one of them runs.

    The first user in records each BLAS library's limit and sets it to 1;
    the last one out restores the recorded limits of the libraries still at
    1 (a library whose limit someone else changed meanwhile is left as it
    is). :meth:`original_limit` is the limit the user set, also while the
    package's limit is on.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved = []  # (library, its limit before the package's)
        self._pending = []  # what a forked child still has to restore

    def _after_fork_in_child(self):
        # The child has one thread: none of the parent's users runs in it,
        # and it inherited the parent's limit of 1 if one was on. That limit
        # is lifted at the child's first call (not here: a fork handler must
        # not take locks another thread of the parent may have held).
        self._lock = threading.Lock()
        self._pending, self._saved, self._users = self._saved, [], 0

    def _restore_pending(self):
        pending, self._pending = self._pending, []
        for lib, n_threads in pending:
            if lib.num_threads == 1:
                _set_blas_threads(lib, n_threads)

    def restore_after_fork(self):
        """Lift the limit of 1 a forked child inherited (its first fit or
        prediction does, even one too small for threads)."""
        if self._pending:
            with self._lock:
                self._restore_pending()

    def original_limit(self):
        """The lowest limit of the loaded BLAS libraries, as the user set it;
        1 when threadpoolctl knows none of them (Apple's Accelerate), whose
        threads the package could not hold at one beside its team."""
        with self._lock:
            self._restore_pending()
            if self._users:
                saved = dict((id(lib), n) for lib, n in self._saved)
                limits = [
                    saved.get(id(lib), lib.num_threads) for lib in _blas_controllers()
                ]
            else:
                limits = [lib.num_threads for lib in _blas_controllers()]
        return min(limits, default=1)

    def acquire(self):
        """Limit BLAS to one thread (if it is not yet); return whether every
        BLAS library now runs on one thread (False when another thread of
        the user's holds threadpoolctl's control of OpenBLAS)."""
        with self._lock:
            self._restore_pending()
            libs = _blas_controllers()
            if self._users == 0:
                self._saved = []
                for lib in libs:
                    before = lib.num_threads
                    if before > 1:
                        _set_blas_threads(lib, 1)
                        if lib.num_threads == 1:
                            self._saved.append((lib, before))
            self._users += 1
            return all(lib.num_threads <= 1 for lib in libs)

    def release(self):
        with self._lock:
            self._users -= 1
            if self._users == 0:
                saved, self._saved = self._saved, []
                for lib, n_threads in saved:
                    if lib.num_threads == 1:
                        _set_blas_threads(lib, n_threads)

    @contextlib.contextmanager
    def one_thread(self):
        """BLAS on one thread inside the block; yields whether it is."""
        with _entered(self.acquire, lambda limited: self.release()) as limited:
            yield limited


_BLAS_OWNER = _BlasOwner()


def _one_blas_thread():
    """BLAS on one thread inside the block (restored by the last user)."""
    return _BLAS_OWNER.one_thread()


class _RunningTeams:
    """The threads of the package's teams running now, in all Python
    threads: a new team takes the cores the others leave (at least one). A
    team started inside another one of the same Python thread (the
    validation score of early stopping, between two epochs) may reuse its
    cores: that thread's outer team is idle meanwhile."""

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self.threads = 0

    def _after_fork_in_child(self):
        self.__init__()

    def enter(self, wanted, cores=None):
        """A team size of at most ``wanted`` that fits in the ``cores``
        (default :func:`max_threads`) the other teams leave (at least 1),
        counted as running until :meth:`leave` (given the token returned
        with it)."""
        held = getattr(self._local, "held", 0)
        cores = max_threads() if cores is None else cores
        with self._lock:
            n_threads = max(1, min(wanted, cores - (self.threads - held)))
            added = max(0, n_threads - held)
            self.threads += added
        self._local.held = max(held, n_threads)
        return n_threads, (held, added)

    def leave(self, token):
        held, added = token
        self._local.held = held
        with self._lock:
            self.threads -= added

    @contextlib.contextmanager
    def reserve(self, wanted, cores=None):
        """:meth:`enter` and :meth:`leave` around the block, which gets the
        team size."""
        with _entered(
            lambda: self.enter(wanted, cores), lambda t: self.leave(t[1])
        ) as (
            n_threads,
            _,
        ):
            yield n_threads


_TEAMS = _RunningTeams()


@contextlib.contextmanager
def _entered(enter, leave):
    """``enter()``'s result inside the block, then ``leave(result)``, each
    with Ctrl-C held back (raised as ``KeyboardInterrupt`` after it): the
    process-wide counts and BLAS limits they change are not left half set
    by a Ctrl-C (one inside a ``predict`` once left BLAS on one thread for
    the rest of the process). One :func:`deferred_interrupt` for the whole
    block holds Ctrl-C back during ``enter`` and ``leave`` and lets it act in
    between.

    A child forked inside the block (by a callback, say) starts with counts
    of zero: the block's ``leave`` is not run there, since it would undo an
    ``enter`` the child never counted (the child's first call lifts the
    limit of 1 it inherited).
    """
    with deferred_interrupt() as interrupt:
        state = {}
        forks = _ProcessState.forks
        try:
            state["result"] = enter()
            interrupt.holding = False
            if interrupt.requested:
                raise KeyboardInterrupt
            yield state["result"]
        finally:
            interrupt.holding = True
            interrupt.requested = False
            if "result" in state and _ProcessState.forks == forks:
                leave(state["result"])
    if interrupt.requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _team_and_one_blas_thread(wanted, cores=None):
    """:meth:`_RunningTeams.reserve` and :meth:`_BlasOwner.one_thread` in
    one (Ctrl-C held back once on the way in and once on the way out):
    yields the team size and whether BLAS runs on one thread."""

    def enter():
        n_threads, token = _TEAMS.enter(wanted, cores)
        try:
            return n_threads, token, _BLAS_OWNER.acquire()
        except BaseException:
            _TEAMS.leave(token)
            raise

    def leave(entered):
        try:
            _BLAS_OWNER.release()
        finally:
            _TEAMS.leave(entered[1])

    with _entered(enter, leave) as (n_threads, _, limited):
        yield n_threads, limited


class TeamChoice(NamedTuple):
    """How one call of the engine's compiled loop runs: on ``threads``
    threads, which keep to their CPUs and sleep as soon as they wait when
    ``pinned`` (``_team.h``)."""

    threads: int
    pinned: bool = False


class _PaceState(NamedTuple):
    """What the pace knows of one network's team."""

    # way -> [(seconds per row, when, trained, stint seconds)], newest last
    measured: dict
    interval: float  # the probe interval
    last: object = None  # the way of the latest call
    run_seconds: float = 0.0  # its stints in a row: their seconds
    run_measured: int = 0  # and how many were measured
    trained: float = 0.0  # seconds of the stints so far
    seconds: float = 0.0  # the stint under way: its calls' seconds
    rows: int = 0  # and rows
    ended: float = 0.0  # when the latest call ended
    best: object = None  # the way found fastest
    # way -> its runs of TRY_MEASURED measured stints or more (replaced, not
    # updated: the default is every state's)
    runs: Mapping = types.MappingProxyType({})


class _TeamPace:
    """How a team has lately trained fastest: on all its threads, on all its
    threads kept to their CPUs, or on one.

    The engine runs each call of its compiled loop (about 20 ms of training,
    less when an epoch ends sooner) the way this picks. A way runs in
    *stints*: calls in a row that add up to at least ``MIN_SECONDS``, timed
    together (the calls of a small network's epochs take 1-2 ms each; a
    stint left unfinished for ``GAP_SECONDS`` is dropped; the engine does
    not time a fit's first call, one minibatch with cold caches, unless it
    ends the epoch, and counts a team's call that the pool ran on one thread
    as one thread's). The pinned way's stints are measured once it has run
    ``PINNED_SETTLE_SECONDS`` in a row (:meth:`settle_seconds`): the
    scheduler needs a moment to move a busy process away from a thread kept
    to a CPU, after a switch to it as after a try of another way; the other
    ways' stints count at once. A way's measure is the median of its last
    ``KEEP`` measured stints, so one stint that the machine slowed does not
    switch. The pace runs the way found fastest, and another takes over only
    if it measures faster by more than ``SWITCH_MARGIN`` (stints' times
    spread widely beside busy processes, and a switch to the pinned way
    costs a settling).

    The other ways are tried again, one at a time, each try lasting until
    ``TRY_MEASURED`` of its stints are measured (a try's measures replace
    the way's earlier ones). A way is due for a try once its newest measure
    is older than the network's probe interval, and once the try (its
    settling and ``TRY_MEASURED`` stints, at the way's last measured
    slowdown, taken as at most ``MAX_SLOWDOWN``) costs at most
    ``TRY_BUDGET`` of the time trained since its last one: with stints of 20
    ms, the pinned way measured 1.5x slower or worse waits 1.75 s of
    training and 1.05x slower 0.18 s, the free team or one thread 1.0 s and
    0.1 s (fits too short to train long in the interval, among other work,
    would otherwise spend much of their time on tries of a way far slower,
    while a close call is tried again soon). Until a way has run
    ``UNBUDGETED_RUNS`` times (a run: ``TRY_MEASURED`` measured stints in a
    row or more), it is tried at the interval whatever the try costs: a
    network's first measures often come as its process starts (threads
    created, an idle core waking), and a way measured slow then would wait
    long for another look. The interval (one per network) starts at
    ``PROBE_SECONDS`` and doubles, up to ``MAX_PROBE_SECONDS``, each time a
    try ends without taking over, and starts again when the fastest way
    changes.

    A process's first ``WARMUP_SECONDS`` of calls (of any network) are not
    measured: they run the first way, the free team, slower than it will
    run (its threads starting, an idle core waking; the pinned way's first
    calls are slow too), and a free team measured then lost to the pinned
    way for the process's next fits.

    The team's threads, free to move, do best on a quiet machine. Beside a
    busy process the scheduler leaves them sharing one core, about one
    thread's speed; kept to their own CPUs and sleeping as they wait, they
    draw the busy process to the core a waiting thread leaves idle and get
    more than one core between them. One thread does best on a network too
    small for a wake-up between its phases, or in a period in which a core
    runs slowly. The pieces are the team's every way, so the results do not
    depend on the choice. The pinned way is offered only where it pins
    (``pinnable``: see :func:`can_pin`). Each team size of a network is
    measured on its own. Shared by the process's threads (a grid search's
    fits of one network learn from each other).
    """

    PROBE_SECONDS = 0.5
    MAX_PROBE_SECONDS = 4.0
    MIN_SECONDS = 0.004
    GAP_SECONDS = 0.1
    PINNED_SETTLE_SECONDS = 0.03
    MAX_NETWORKS = 32
    KEEP = 5
    TRY_MEASURED = 2
    TRY_BUDGET = 0.02
    UNBUDGETED_RUNS = 2
    MAX_SLOWDOWN = 0.5
    SWITCH_MARGIN = 0.05
    WARMUP_SECONDS = 0.1

    def __init__(self, warmup_seconds=None):
        self._lock = threading.Lock()
        # (network, team threads, pinnable) -> _PaceState
        self._networks = {}
        # seconds of calls still to run before any is measured
        self._unmeasured = (
            self.WARMUP_SECONDS if warmup_seconds is None else warmup_seconds
        )

    def _after_fork_in_child(self):
        # A thread of the parent may have held the lock at the fork: the
        # child's copy would stay locked. The measures were the parent's, and
        # the child's threads warm up afresh.
        self.__init__()

    @staticmethod
    def choices(team_threads, pinnable):
        """The ways a team of ``team_threads`` may run a call, in the order
        they are first tried."""
        if team_threads == 1:
            return (TeamChoice(1),)
        if not pinnable:
            return (TeamChoice(team_threads), TeamChoice(1))
        return (TeamChoice(team_threads), TeamChoice(team_threads, True), TeamChoice(1))

    @classmethod
    def settle_seconds(cls, choice):
        """How long ``choice`` runs in a row before its stints count."""
        return cls.PINNED_SETTLE_SECONDS if choice.pinned else 0.0

    @staticmethod
    def _measure(stints):
        """A way's seconds per row: the median of its measured stints."""
        return statistics.median(stint[0] for stint in stints)

    @classmethod
    def _fastest(cls, measured, choices, best):
        """The fastest way; ``best``, the way found fastest so far, unless
        another is faster by more than ``SWITCH_MARGIN``."""
        fastest = min(choices, key=lambda choice: cls._measure(measured[choice]))
        if best in measured and cls._measure(measured[fastest]) > (
            1 - cls.SWITCH_MARGIN
        ) * cls._measure(measured[best]):
            return best
        return fastest

    def choose(self, network, team_threads, now, pinnable=False):
        """The :class:`TeamChoice` for the next call of ``network``'s team of
        ``team_threads``; the pinned way only if ``pinnable``."""
        choices = self.choices(team_threads, pinnable)
        if len(choices) == 1:
            return choices[0]
        with self._lock:
            state = self._networks.get((network, team_threads, pinnable))
        if state is None:
            return choices[0]
        if state.seconds > 0 and now - state.ended <= self.GAP_SECONDS:
            return state.last  # a stint goes on
        measured = state.measured
        every = all(choice in measured for choice in choices)
        fastest = self._fastest(measured, choices, state.best) if every else None
        if state.last != fastest and state.run_measured < self.TRY_MEASURED:
            return state.last  # a try goes on
        for choice in choices:
            if choice not in measured:
                return choice
        fastest_measure = self._measure(measured[fastest])

        def try_costs_little(choice):
            if state.runs.get(choice, 0) < self.UNBUDGETED_RUNS:
                return True
            slower = self._measure(measured[choice]) / fastest_measure - 1
            slower = min(max(slower, 0.0), self.MAX_SLOWDOWN)
            _, _, trained, stint = measured[choice][-1]
            cost = (self.settle_seconds(choice) + self.TRY_MEASURED * stint) * slower
            return cost <= self.TRY_BUDGET * (state.trained - trained)

        due = [
            choice
            for choice in choices
            if choice != fastest
            and now - measured[choice][-1][1] > state.interval
            and try_costs_little(choice)
        ]
        if not due:
            return fastest
        return min(due, key=lambda choice: measured[choice][-1][1])

    def record(self, network, team_threads, choice, seconds, rows, now, pinnable=False):
        """A call of ``network``'s team of ``team_threads`` (``pinnable`` as
        in :meth:`choose`), started at ``now``, ran ``rows`` rows in
        ``seconds`` the way ``choice`` (a :class:`TeamChoice`) says."""
        choices = self.choices(team_threads, pinnable)
        if choice not in choices or len(choices) == 1 or rows <= 0:
            return
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        key = (network, team_threads, pinnable)
        ended = now + seconds
        with self._lock:
            if self._unmeasured > 0:
                self._unmeasured -= seconds
                return
            state = self._networks.pop(key, None) or _PaceState({}, self.PROBE_SECONDS)
            run_seconds, run_measured = state.run_seconds, state.run_measured
            if choice != state.last:
                run_seconds, run_measured = 0.0, 0
            elif now - state.ended <= self.GAP_SECONDS:
                seconds, rows = state.seconds + seconds, state.rows + rows
            measured, interval, best = state.measured, state.interval, state.best
            trained, runs = state.trained, state.runs
            if seconds >= self.MIN_SECONDS:  # a stint is over
                trained += seconds
                if run_seconds >= self.settle_seconds(choice):
                    run_measured += 1
                    if run_measured == self.TRY_MEASURED:
                        runs = {**runs, choice: runs.get(choice, 0) + 1}
                    stint = (seconds / rows, now, trained, seconds)
                    measured, interval, best = self._update(
                        state, choices, choice, stint, run_measured
                    )
                run_seconds += seconds
                seconds, rows = 0.0, 0
            self._networks[key] = _PaceState(
                measured,
                interval,
                choice,
                run_seconds,
                run_measured,
                trained,
                seconds,
                rows,
                ended,
                best,
                runs,
            )
            while len(self._networks) > self.MAX_NETWORKS:
                del self._networks[next(iter(self._networks))]

    def _update(self, state, choices, choice, stint, run_measured):
        """The measures, interval and fastest way once ``stint`` of
        ``choice`` (its ``run_measured``-th measured in a row) is over."""
        measured, interval = state.measured, state.interval
        every = all(c in measured for c in choices)
        fastest = self._fastest(measured, choices, state.best) if every else None
        earlier = measured.get(choice, ())
        if run_measured == 1 and choice != fastest:
            earlier = ()  # a try counts on its own
        recent = [*earlier, stint]
        measured = {**measured, choice: recent[-self.KEEP :]}
        if not all(c in measured for c in choices):
            return measured, interval, state.best
        now_fastest = self._fastest(measured, choices, fastest)
        if every and now_fastest != fastest:
            interval = self.PROBE_SECONDS
        elif every and choice != fastest and run_measured == self.TRY_MEASURED:
            # a try that did not take over
            interval = min(2 * interval, self.MAX_PROBE_SECONDS)
        return measured, interval, now_fastest


TEAM_PACE = _TeamPace()


def can_pin(n_threads, multiply_adds=None):
    """Whether a team of ``n_threads`` started from the calling thread
    would keep its threads to CPUs (the pinned way of :class:`_TeamPace`):
    on Linux, with one thread per CPU the calling thread may use, and for
    minibatches of ``multiply_adds`` (when given) of at least
    ``MIN_MULTIPLY_ADDS_FOR_PINNING``."""
    if n_threads < 2 or not pinning_available():
        return False
    if multiply_adds is not None and multiply_adds < MIN_MULTIPLY_ADDS_FOR_PINNING:
        return False
    affinity = _cpu_affinity()
    return affinity is not None and len(affinity) == n_threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def training_threads(multiply_adds):
    """The engine's team for minibatches of ``multiply_adds`` multiply-adds
    (in the matrix products); yields its :class:`TeamSize`.

    Pieces: as many as BLAS may run threads (the lowest threadpoolctl limit
    the user set on the loaded BLAS libraries) within :func:`max_threads`;
    one below ``MIN_MULTIPLY_ADDS_FOR_THREADS``. They depend on the user's
    limits and the machine only, so that a fit gives the same model whatever
    else runs. Threads: as many as the pieces, within the cores that the
    teams of other Python threads leave. BLAS runs on one thread until the
    context exits, unless the minibatches are too small for it to start its
    own threads anyway: the engine never runs more threads than its team.
    """
    if multiply_adds < MIN_MULTIPLY_ADDS_FOR_THREADS:
        _BLAS_OWNER.restore_after_fork()
        yield TeamSize(pieces=1, threads=1)
        return
    cores = engine_threads()
    pieces = max(1, min(_BLAS_OWNER.original_limit(), cores, MAX_PIECES))
    with _team_and_one_blas_thread(pieces, cores) as (n_threads, limited):
        # Another thread of the user's holds OpenBLAS at several threads:
        # BLAS's own threads then do the work, as the user asked.
        yield TeamSize(pieces=pieces, threads=n_threads if limited else 1)


@contextlib.contextmanager
def prediction_threads(n_rows, multiply_adds_per_row, max_block_rows):
    """The team for a prediction of ``n_rows`` rows; yields ``(n_threads,
    block_rows)``.

    The rows go through in blocks whose size depends on ``n_rows`` only
    (from 128 rows to ``max_block_rows``), so that a row's result does not
    depend on the number of threads. BLAS runs on one thread during the
    prediction whenever its products are large enough for it to start its own
    threads, which would keep spinning into whatever the user runs next (a
    fit after a ``score`` is the usual case); the package's team takes the
    blocks in turn instead, when there is enough work for it, on at most as
    many threads as BLAS's limit allows (they stand in for BLAS's).
    """
    block_rows = min(max_block_rows, max(128, -(-n_rows // 8)))
    work = n_rows * multiply_adds_per_row
    if work < BLAS_THREADING_MULTIPLY_ADDS:
        _BLAS_OWNER.restore_after_fork()
        yield 1, block_rows
        return
    n_blocks = -(-n_rows // block_rows)
    cores = max_threads()
    wanted = min(
        cores,
        _BLAS_OWNER.original_limit(),
        n_blocks,
        work // MIN_MULTIPLY_ADDS_PER_PREDICTION_THREAD,
    )
    with _team_and_one_blas_thread(max(1, wanted), cores) as (n_threads, limited):
        yield _mark_team_started(n_threads if limited else 1), block_rows
