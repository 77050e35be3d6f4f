# The optimizers, as the training engine's threads call them (see
# _optimizers.pyx): once per minibatch, ``prepare`` fills a Step with the
# rates of this step (each thread its own copy); then ``step_range`` steps
# each range of parameters as soon as its gradient is complete.
from cython cimport floating

cdef enum:
    # Moments (arrays of the parameters' layout) an optimizer may keep.
    MAX_MOMENTS = 4


cdef struct Step:
    Py_ssize_t t                 # steps taken before this one (0: the first)
    double lr                    # the schedule's learning rate at this step
    double decay                 # the coefficients' factor 1 - lr * weight_decay
    double rate                  # the rule's step (Adam: bias-corrected lr; SGD: lr)


cdef class Optimizer:
    cdef public Py_ssize_t n_params
    cdef public object dtype
    cdef public double learning_rate_init
    cdef public double learning_rate       # the rate of the epoch schedules
    cdef public str lr_schedule
    cdef public double power_t
    cdef public double weight_decay
    cdef public Py_ssize_t step            # parameter updates made so far
    cdef public Py_ssize_t horizon         # cosine: steps of the whole fit (0: none)
    cdef public Py_ssize_t horizon_start   # cosine: the step count it started at
    cdef char* _moments[MAX_MOMENTS]

    cdef int bind(self) except -1
    cdef void prepare(self, Step* s) noexcept nogil
    cdef void update_float(self, const Step* s, float* theta, const float* grad,
                           Py_ssize_t off, Py_ssize_t n) noexcept nogil
    cdef void update_double(self, const Step* s, double* theta, const double* grad,
                            Py_ssize_t off, Py_ssize_t n) noexcept nogil


cdef void scale_range(floating* theta, Py_ssize_t n, floating factor) noexcept nogil


cdef inline void step_range(Optimizer opt, const Step* s, floating* theta,
                            const floating* grad, Py_ssize_t off, Py_ssize_t n,
                            bint decayed) noexcept nogil:
    # The step of parameters [off, off + n) of the flat vector: decoupled
    # weight decay first (``decayed``: coefficients only), theta * (1 - lr *
    # weight_decay), then the optimizer's update from the gradient, which was
    # taken at the undecayed parameters.
    if decayed and s.decay != 1:
        scale_range(theta + off, n, <floating> s.decay)
    if floating is float:
        opt.update_float(s, theta, grad, off, n)
    else:
        opt.update_double(s, theta, grad, off, n)
