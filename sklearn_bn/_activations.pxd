# Scalar activation functions, inlined into the fused batch-norm kernels.
#
# Backward derivatives are written in terms of the activation's *output*
# ``a = f(y)``, which the forward pass keeps anyway: relu'(y) = [a > 0],
# tanh'(y) = 1 - a**2, logistic'(y) = a * (1 - a).
from libc.math cimport exp, expf, tanh, tanhf
from cython cimport floating

cpdef enum Activation:
    IDENTITY = 0
    RELU = 1
    TANH = 2
    LOGISTIC = 3


cdef inline floating act_forward(floating y, int act) noexcept nogil:
    if act == RELU:
        return y if y > 0 else 0
    elif act == TANH:
        if floating is float:
            return tanhf(y)
        else:
            return tanh(y)
    elif act == LOGISTIC:
        return logistic(y)
    return y


cdef inline floating act_derivative(floating a, int act) noexcept nogil:
    # A typed one: next to a literal 1, Cython computes in double.
    cdef floating one = 1
    if act == RELU:
        return one if a > 0 else 0
    elif act == TANH:
        return one - a * a
    elif act == LOGISTIC:
        return a * (one - a)
    return one


cdef inline floating logistic(floating y) noexcept nogil:
    # Two branches so that exp never overflows. A typed one keeps float32 in
    # float32 (next to a literal 1, Cython computes in double).
    cdef floating e, one = 1
    if floating is float:
        if y >= 0:
            return one / (one + expf(-y))
        e = expf(y)
    else:
        if y >= 0:
            return one / (one + exp(-y))
        e = exp(y)
    return e / (one + e)


cdef void cact_forward(floating* y, Py_ssize_t n, int act) noexcept nogil
cdef void cact_backward(const floating* a, floating* delta, Py_ssize_t n,
                        int act) noexcept nogil
