"""The optimizers: each one object with its state, its hyper-parameters, its
learning-rate schedule and its weight decay, shaped as scikit-learn's
(``sklearn/neural_network/_stochastic_optimizers.py``).

The engine steps the parameters in compiled code, on every thread of its
team: once per minibatch each thread calls :meth:`Optimizer.prepare` for the
rates of that step, then ``step_range`` (``_optimizers.pxd``) on each range of
parameters whose gradient is complete; the update of an optimizer is its own
``update_float`` / ``update_double``. Between calls of the engine, these
objects keep what persists: the moments (flat arrays in the parameters'
layout), the step count and the learning rate, with scikit-learn's epoch
schedules (:meth:`Optimizer.iteration_ends`) and stopping rule
(:meth:`Optimizer.trigger_stopping`). An estimator keeps its optimizer's
:meth:`Optimizer.state_dict` (plain arrays, numbers and strings, which pickle
and skops store as they are) between ``partial_fit`` calls and rebuilds it
with :func:`from_state_dict`.

Schedules (``lr_schedule``, the estimators' ``learning_rate``):

* ``'constant'``: ``learning_rate_init`` at every step;
* ``'invscaling'``, ``'adaptive'``: scikit-learn's epoch schedules, followed by
  the optimizers whose ``epoch_schedules`` is true (SGD; Adam ignores them,
  as scikit-learn's does);
* ``'cosine'``: step ``t`` of a fit (from 0) uses ``learning_rate_init * (1 +
  cos(pi * t / T)) / 2``, ``T`` the steps the fit would take in ``max_iter``
  epochs (:meth:`Optimizer.plan`); ``partial_fit`` steps at
  ``learning_rate_init``.

Weight decay is decoupled (Loshchilov & Hutter, 2019, "Decoupled Weight
Decay Regularization", :arxiv:`1711.05101`; PyTorch's ``AdamW``): at each step
the coefficients become ``W * (1 - lr_t * weight_decay) + update``, where
``update`` is the optimizer's step from the gradient at ``W`` and ``lr_t``
the schedule's rate at that step (not Adam's bias-corrected step size).
Gammas, betas and intercepts are not decayed.

Adding an optimizer: a subclass of :class:`Optimizer` here, with its
hyper-parameters, moments and update, and its entry in :data:`OPTIMIZERS`
(see CONTRIBUTING.md).
"""
from libc.math cimport cos, sqrt, sqrtf, M_PI
from cython cimport floating

import numpy as np
cimport numpy as cnp

from sklearn_bn._simd cimport simd_void
from sklearn_bn._utils import aligned_zeros

cnp.import_array()

#: The learning-rate schedules (the estimators' ``learning_rate``).
SCHEDULES = ("constant", "invscaling", "adaptive", "cosine")


def batches_per_epoch(n_samples, batch_size):
    """Minibatches of an epoch over ``n_samples`` rows: consecutive slices of
    ``batch_size``, a trailing single row joining the previous slice."""
    n_batches = -(-n_samples // batch_size)
    if n_samples % batch_size == 1 and n_samples > batch_size:
        n_batches -= 1
    return n_batches


cdef class Optimizer:
    """What every optimizer has: the step count, the learning rate and its
    schedule, and decoupled weight decay.

    Parameters
    ----------
    n_params : int
    dtype : dtype of the parameters
    learning_rate_init : float
    lr_schedule : {'constant', 'invscaling', 'adaptive', 'cosine'}
    power_t : float
        Exponent of the ``'invscaling'`` schedule.
    weight_decay : float >= 0

    Attributes
    ----------
    learning_rate : float
        The current rate of the epoch schedules (``learning_rate_init``
        otherwise).
    step : int
        Parameter updates made so far.
    horizon, horizon_start : int
        The cosine schedule of the current fit: its steps ``T`` (0: none)
        and the step count it started at.
    """

    #: Name in :data:`OPTIMIZERS` and in the estimators' ``solver``.
    name = None
    #: Names of the moment arrays (attributes), in the order of ``_moments``.
    moment_names = ()
    #: Constructor argument -> the estimators' parameter it comes from.
    estimator_parameters = {"learning_rate_init": "learning_rate_init",
                            "lr_schedule": "learning_rate", "power_t": "power_t",
                            "weight_decay": "weight_decay"}
    #: Whether the optimizer follows the epoch schedules 'invscaling' and
    #: 'adaptive' (scikit-learn's SGD does, its Adam does not).
    epoch_schedules = False

    def __init__(self, n_params, dtype, *, learning_rate_init=0.001,
                 lr_schedule="constant", power_t=0.5, weight_decay=0.0):
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, "
                             f"got {lr_schedule!r}")
        self.n_params = int(n_params)
        self.dtype = np.dtype(dtype)
        self.learning_rate_init = float(learning_rate_init)
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = str(lr_schedule)
        self.power_t = float(power_t)
        self.weight_decay = float(weight_decay)
        self.step = 0
        self.horizon = 0
        self.horizon_start = 0

    @classmethod
    def from_estimator(cls, estimator, n_params, dtype):
        """A fresh optimizer with ``estimator``'s hyper-parameters."""
        names = {**Optimizer.estimator_parameters, **cls.estimator_parameters}
        return cls(n_params, dtype, **{arg: getattr(estimator, param)
                                       for arg, param in names.items()})

    # ------------------------------------------------------------------
    # The schedule, between the engine's calls

    def plan(self, total_steps):
        """Start the cosine schedule of a fit of ``total_steps`` steps (its
        ``T``) at the current step; ``0`` (``partial_fit``): no schedule,
        every step at ``learning_rate``."""
        self.horizon = int(total_steps) if self.lr_schedule == "cosine" else 0
        self.horizon_start = self.step

    def iteration_ends(self, time_step):
        """Called after each epoch with the number of samples seen."""
        if self.epoch_schedules and self.lr_schedule == "invscaling":
            self.learning_rate = (self.learning_rate_init
                                  / (time_step + 1) ** self.power_t)

    def trigger_stopping(self, msg, verbose):
        """Whether training stops after ``msg`` (no improvement); prints it.
        The ``'adaptive'`` schedule divides the learning rate by 5 instead,
        until it is below 1e-6."""
        if not (self.epoch_schedules and self.lr_schedule == "adaptive"):
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False

    def step_rates(self, t):
        """The rates of the step that follows ``t`` steps, as the compiled
        update sees them: ``{"lr": ..., "decay": ..., "rate": ...}`` (the
        schedule's rate, the coefficients' decay factor, the rule's step
        size)."""
        cdef Step s
        s.t = t
        self.prepare(&s)
        return {"lr": s.lr, "decay": s.decay, "rate": s.rate}

    # ------------------------------------------------------------------
    # State

    def moments(self):
        """The moment arrays, by name."""
        return {name: getattr(self, name) for name in self.moment_names}

    def state_dict(self):
        """Everything that defines the optimizer, as plain values (copies)."""
        state = {"solver": self.name, "n_params": self.n_params,
                 "dtype": self.dtype.name, "step": self.step,
                 "learning_rate": self.learning_rate,
                 "horizon": self.horizon, "horizon_start": self.horizon_start}
        for name in self.estimator_parameters_of():
            state[name] = getattr(self, name)
        for name, array in self.moments().items():
            state[name] = np.array(array, copy=True)
        return state

    @classmethod
    def estimator_parameters_of(cls):
        """The constructor's hyper-parameters (names)."""
        return list({**Optimizer.estimator_parameters, **cls.estimator_parameters})

    # ------------------------------------------------------------------
    # Compiled side

    cdef int bind(self) except -1:
        """Take the moments' data pointers (the engine checked the arrays)."""
        cdef Py_ssize_t k
        for k, name in enumerate(self.moment_names):
            self._moments[k] = <char*> cnp.PyArray_DATA(getattr(self, name))
        return 0

    cdef void prepare(self, Step* s) noexcept nogil:
        """The rates of step ``s.t``: the schedule's, the decay factor of the
        coefficients, and the rule's own (here the schedule's)."""
        cdef double t = s.t - self.horizon_start
        if self.horizon > 0:
            s.lr = self.learning_rate_init * (1 + cos(M_PI * t / self.horizon)) / 2
        else:
            s.lr = self.learning_rate
        s.decay = 1 - s.lr * self.weight_decay
        s.rate = s.lr

    cdef void update_float(self, const Step* s, float* theta, const float* grad,
                           Py_ssize_t off, Py_ssize_t n) noexcept nogil:
        pass

    cdef void update_double(self, const Step* s, double* theta, const double* grad,
                            Py_ssize_t off, Py_ssize_t n) noexcept nogil:
        pass


cdef class SGDOptimizer(Optimizer):
    """Stochastic gradient descent with (Nesterov's) momentum, scikit-learn's
    update: ``v = momentum * v - lr * g``, then ``W += v``, or with Nesterov
    ``W += momentum * v - lr * g``.

    Parameters
    ----------
    n_params, dtype, learning_rate_init, lr_schedule, power_t, weight_decay
        See :class:`Optimizer`.
    momentum : float
    nesterov : bool

    Attributes
    ----------
    velocity : ndarray of shape (n_params,)
    """

    name = "sgd"
    moment_names = ("velocity",)
    estimator_parameters = {"momentum": "momentum", "nesterov": "nesterovs_momentum"}
    epoch_schedules = True

    cdef public double momentum
    cdef public bint nesterov
    cdef public object velocity

    def __init__(self, n_params, dtype, *, momentum=0.9, nesterov=True, **schedule):
        super().__init__(n_params, dtype, **schedule)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.velocity = aligned_zeros(self.n_params, self.dtype)

    cdef void update_float(self, const Step* s, float* theta, const float* grad,
                           Py_ssize_t off, Py_ssize_t n) noexcept nogil:
        _sgd(theta + off, grad + off, (<float*> self._moments[0]) + off, n,
             <float> self.momentum, <float> s.rate, self.nesterov)

    cdef void update_double(self, const Step* s, double* theta, const double* grad,
                            Py_ssize_t off, Py_ssize_t n) noexcept nogil:
        _sgd(theta + off, grad + off, (<double*> self._moments[0]) + off, n,
             <double> self.momentum, s.rate, self.nesterov)


cdef simd_void _sgd(floating* theta, const floating* grad, floating* velocity,
                    Py_ssize_t n, floating mom, floating lr,
                    bint nesterov) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, v
    for i in range(n):
        g = grad[i]
        v = mom * velocity[i] - lr * g
        velocity[i] = v
        if nesterov:
            theta[i] += mom * v - lr * g
        else:
            theta[i] += v


cdef class AdamOptimizer(Optimizer):
    """Adam (Kingma & Ba, 2014), scikit-learn's update: the moments ``m = b1 *
    m + (1 - b1) * g`` and ``v = b2 * v + (1 - b2) * g ** 2``, then ``W -=
    lr_t * m / (sqrt(v) + epsilon)`` with ``lr_t = lr * sqrt(1 - b2 ** s) /
    (1 - b1 ** s)`` at Adam's ``s``-th step (from 1). It ignores the epoch
    schedules, as scikit-learn's does.

    Parameters
    ----------
    n_params, dtype, learning_rate_init, lr_schedule, power_t, weight_decay
        See :class:`Optimizer`.
    beta_1, beta_2 : float
        Exponential decays of the first and second moments.
    epsilon : float

    Attributes
    ----------
    first_moment, second_moment : ndarray of shape (n_params,)
    """

    name = "adam"
    moment_names = ("first_moment", "second_moment")
    estimator_parameters = {"beta_1": "beta_1", "beta_2": "beta_2",
                            "epsilon": "epsilon"}

    cdef public double beta_1
    cdef public double beta_2
    cdef public double epsilon
    cdef public object first_moment
    cdef public object second_moment

    def __init__(self, n_params, dtype, *, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 **schedule):
        super().__init__(n_params, dtype, **schedule)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.first_moment = aligned_zeros(self.n_params, self.dtype)
        self.second_moment = aligned_zeros(self.n_params, self.dtype)

    cdef void prepare(self, Step* s) noexcept nogil:
        cdef Py_ssize_t k = s.t + 1
        Optimizer.prepare(self, s)
        s.rate = s.lr * sqrt(1 - self.beta_2 ** k) / (1 - self.beta_1 ** k)

    cdef void update_float(self, const Step* s, float* theta, const float* grad,
                           Py_ssize_t off, Py_ssize_t n) noexcept nogil:
        _adam(theta + off, grad + off, (<float*> self._moments[0]) + off,
              (<float*> self._moments[1]) + off, n, s.rate, self.beta_1, self.beta_2,
              self.epsilon)

    cdef void update_double(self, const Step* s, double* theta, const double* grad,
                            Py_ssize_t off, Py_ssize_t n) noexcept nogil:
        _adam(theta + off, grad + off, (<double*> self._moments[0]) + off,
              (<double*> self._moments[1]) + off, n, s.rate, self.beta_1, self.beta_2,
              self.epsilon)


cdef simd_void _adam(floating* theta, const floating* grad, floating* moment_1,
                     floating* moment_2, Py_ssize_t n, double rate, double beta_1,
                     double beta_2, double epsilon) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g
    cdef floating lr_t = <floating> rate
    cdef floating b1 = <floating> beta_1
    cdef floating b2 = <floating> beta_2
    # 1 - beta in the working precision, as numpy computes
    # ``(1 - beta_1) * grad`` on float32 arrays (a literal 1 next to a
    # float would make Cython compute the loop in double).
    cdef floating c1 = <floating> (1 - beta_1)
    cdef floating c2 = <floating> (1 - beta_2)
    cdef floating eps = <floating> epsilon
    for i in range(n):
        g = grad[i]
        moment_1[i] = b1 * moment_1[i] + c1 * g
        moment_2[i] = b2 * moment_2[i] + c2 * (g * g)
        if floating is float:
            theta[i] -= lr_t * moment_1[i] / (sqrtf(moment_2[i]) + eps)
        else:
            theta[i] -= lr_t * moment_1[i] / (sqrt(moment_2[i]) + eps)


cdef void scale_range(floating* theta, Py_ssize_t n, floating factor) noexcept nogil:
    """``theta *= factor`` on ``n`` parameters (decoupled weight decay)."""
    cdef Py_ssize_t i
    for i in range(n):
        theta[i] *= factor


#: The optimizers, by the estimators' ``solver``.
OPTIMIZERS = {cls.name: cls for cls in (SGDOptimizer, AdamOptimizer)}


def from_state_dict(state, dtype):
    """The optimizer :meth:`Optimizer.state_dict` describes, its moments in
    ``dtype`` (fresh copies: a failed fit leaves the saved state alone)."""
    cls = OPTIMIZERS[state["solver"]]
    optimizer = cls(state["n_params"], dtype,
                    **{name: state[name] for name in cls.estimator_parameters_of()
                       if name in state})
    for name in ("step", "learning_rate", "horizon", "horizon_start"):
        if name in state:
            setattr(optimizer, name, state[name])
    for name in cls.moment_names:
        getattr(optimizer, name)[:] = state[name]
    return optimizer
