# The hidden-layer activations: their names and codes, and each one's
# forward and derivative, written here once.
#
# The fused kernels (_batchnorm.pyx) are compiled once per activation: they
# take a pointer to one of the tag types below (always NULL; only its type
# matters), so that the activation is a constant inside their loops, and they
# call act_forward and act_gradient. Adding an activation happens in this
# file (its code and name, its tag type in ``activation_t``, its branches in
# the functions below) and in one line of _batchnorm.pyx's ``row_pass``, the
# one place that turns a code into a tag.
from libc.math cimport exp, expf, tanh, tanhf
from cpython.unicode cimport PyUnicode_CompareWithASCIIString
from cython cimport floating

cpdef enum Activation:
    IDENTITY = 0
    RELU = 1
    TANH = 2
    LOGISTIC = 3
    N_ACTIVATIONS = 4

cdef extern from *:
    """
    /* In the order of the codes. */
    static const char* sklearn_bn_activation_names[] = {
        "identity", "relu", "tanh", "logistic"};
    """
    const char** ACTIVATION_NAMES "sklearn_bn_activation_names"


cdef inline int act_code(name) except -1:
    """The code of the activation called ``name`` (``ValueError`` if none)."""
    cdef int code
    if isinstance(name, str):
        for code in range(<int> N_ACTIVATIONS):
            if PyUnicode_CompareWithASCIIString(name, ACTIVATION_NAMES[code]) == 0:
                return code
    names = sorted([ACTIVATION_NAMES[code].decode("ascii") for code in range(<int> N_ACTIVATIONS)])
    raise ValueError(f"activation must be one of {names}, got {name!r}")


cdef extern from *:
    """
    typedef struct { char unused; } sklearn_bn_identity;
    typedef struct { char unused; } sklearn_bn_relu;
    typedef struct { char unused; } sklearn_bn_tanh;
    typedef struct { char unused; } sklearn_bn_logistic;
    """
    ctypedef struct Identity "sklearn_bn_identity":
        pass
    ctypedef struct Relu "sklearn_bn_relu":
        pass
    ctypedef struct Tanh "sklearn_bn_tanh":
        pass
    ctypedef struct Logistic "sklearn_bn_logistic":
        pass


ctypedef fused activation_t:
    Identity
    Relu
    Tanh
    Logistic


cdef inline floating act_forward(floating y, activation_t* act) noexcept nogil:
    """``f(y)``."""
    if activation_t is Relu:
        return y if y > 0 else 0
    elif activation_t is Tanh:
        if floating is float:
            return tanhf(y)
        else:
            return tanh(y)
    elif activation_t is Logistic:
        return logistic(y)
    elif activation_t is Identity:
        return y


cdef inline floating act_gradient(floating d, floating y, floating a,
                                  activation_t* act) noexcept nogil:
    """``d * f'(y)``, from the input ``y`` (ReLU) or the output ``a = f(y)``
    (tanh, logistic), whichever :func:`reads_input` and :func:`reads_output`
    say the activation needs; the other may be anything."""
    # A typed one: next to a literal 1, Cython computes in double.
    cdef floating one = 1
    if activation_t is Relu:
        return d if y > 0 else 0
    elif activation_t is Tanh:
        return d * (one - a * a)
    elif activation_t is Logistic:
        return d * (a * (one - a))
    elif activation_t is Identity:
        return d


cdef inline bint reads_input(activation_t* act) noexcept nogil:
    """Whether :func:`act_gradient` reads ``y``."""
    return activation_t is Relu


cdef inline bint reads_output(activation_t* act) noexcept nogil:
    """Whether :func:`act_gradient` reads ``a``."""
    return activation_t is Tanh or activation_t is Logistic


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
