"""The optimizers' state and schedules, shaped as scikit-learn's
(``sklearn/neural_network/_stochastic_optimizers.py``).

The engine steps the parameters in compiled code; these objects own what
persists between its calls: the moments (flat arrays in the parameters'
layout), the step count and the learning rate, with scikit-learn's
schedule (:meth:`iteration_ends`) and stopping rule (:meth:`trigger_stopping`).
An estimator keeps its optimizer's :meth:`state_dict` (plain arrays and
numbers, which pickle and skops store as they are) between ``partial_fit``
calls and rebuilds it with :func:`from_state_dict`.
"""

import numpy as np

from sklearn_bn._training import Solver


def aligned_zeros(n, dtype):
    """A zero-filled 1-D array whose data start on a 64-byte boundary (the
    engine's threads write neighbouring ranges: no cache line is shared when
    their bounds are multiples of 16 elements)."""
    dtype = np.dtype(dtype)
    raw = np.zeros(n * dtype.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + n * dtype.itemsize].view(dtype)


class _Optimizer:
    """Shared by both optimizers: the step count and the learning rate."""

    def __init__(self, n_params, dtype, learning_rate_init):
        self.learning_rate_init = float(learning_rate_init)
        self.learning_rate = float(learning_rate_init)
        self.step = 0  # parameter updates made so far
        self.dtype = np.dtype(dtype)
        self.n_params = n_params

    def iteration_ends(self, time_step):
        """Called after each epoch with the number of samples seen."""

    def trigger_stopping(self, msg, verbose):
        """Whether training stops after ``msg`` (no improvement); prints it."""
        if verbose:
            print(msg + " Stopping.")
        return True

    def state_dict(self):
        """Everything that defines the optimizer, as plain values (copies)."""
        state = {}
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                value = value.copy()
            elif isinstance(value, np.dtype):
                value = value.name
            state[name] = value
        state["solver"] = self.name
        return state


class SGDOptimizer(_Optimizer):
    """Stochastic gradient descent with (Nesterov's) momentum.

    Parameters
    ----------
    n_params : int
    dtype : dtype of the parameters
    learning_rate_init : float
    lr_schedule : {'constant', 'invscaling', 'adaptive'}
    momentum : float
    nesterov : bool
    power_t : float
        Exponent of the ``'invscaling'`` schedule.

    Attributes
    ----------
    velocity : ndarray of shape (n_params,)
    learning_rate : float
    step : int
    """

    solver = Solver.SGD
    name = "sgd"

    def __init__(self, n_params, dtype, learning_rate_init, lr_schedule,
                 momentum, nesterov, power_t):
        super().__init__(n_params, dtype, learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.power_t = float(power_t)
        self.velocity = aligned_zeros(n_params, dtype)

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.lr_schedule != "adaptive":
            return super().trigger_stopping(msg, verbose)
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False

    def engine_arguments(self):
        """The state and hyper-parameters the engine's epoch takes."""
        return dict(
            solver=self.solver, moment_1=self.velocity,
            moment_2=np.zeros(0, dtype=self.dtype), learning_rate=self.learning_rate,
            momentum=self.momentum, nesterov=self.nesterov, beta_1=0.0, beta_2=0.0,
            adam_epsilon=0.0, step=self.step,
        )


class AdamOptimizer(_Optimizer):
    """Adam (Kingma & Ba, 2014), with the bias corrections in the step size.

    Parameters
    ----------
    n_params : int
    dtype : dtype of the parameters
    learning_rate_init : float
    beta_1, beta_2 : float
        Exponential decays of the first and second moments.
    epsilon : float

    Attributes
    ----------
    first_moment, second_moment : ndarray of shape (n_params,)
    step : int
        Steps taken, which the bias corrections use.
    """

    solver = Solver.ADAM
    name = "adam"

    def __init__(self, n_params, dtype, learning_rate_init, beta_1, beta_2, epsilon):
        super().__init__(n_params, dtype, learning_rate_init)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.first_moment = aligned_zeros(n_params, dtype)
        self.second_moment = aligned_zeros(n_params, dtype)

    def engine_arguments(self):
        """The state and hyper-parameters the engine's epoch takes."""
        return dict(
            solver=self.solver, moment_1=self.first_moment, moment_2=self.second_moment,
            learning_rate=self.learning_rate, momentum=0.0, nesterov=False,
            beta_1=self.beta_1, beta_2=self.beta_2, adam_epsilon=self.epsilon,
            step=self.step,
        )


def from_state_dict(state, dtype):
    """The optimizer :meth:`_Optimizer.state_dict` describes, its moments in
    ``dtype`` (fresh copies: a failed fit leaves the saved state alone)."""
    cls = {"sgd": SGDOptimizer, "adam": AdamOptimizer}[state["solver"]]
    optimizer = cls.__new__(cls)
    for name, value in state.items():
        if name == "solver":
            continue
        if isinstance(value, np.ndarray):
            moved = aligned_zeros(value.size, dtype)
            moved[:] = value
            value = moved
        setattr(optimizer, name, value)
    optimizer.dtype = np.dtype(dtype)
    return optimizer
