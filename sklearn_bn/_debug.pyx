"""Which checks the compiled code makes: a probe of the build's directives.

``setup.py`` compiles every module with the same Cython directives: bounds,
wraparound and initialization checks off, or on in the debug build
(``SKLEARN_BN_CYTHON_DEBUG=1``). The tests ask this module which build they
run on, so that a build that is not what its switch says fails them.

Each probe indexes a view of the middle of a larger buffer just outside the
view, so that an unchecked build reads a neighbouring element of the buffer
(never memory outside it) and returns it, where a checked build raises
``IndexError`` or wraps the negative index around.
"""

import numpy as np


def _boundscheck():
    buffer = np.arange(4.0)
    cdef double[::1] view = buffer[1:3]
    cdef Py_ssize_t past_end = view.shape[0]
    try:
        view[past_end]
    except IndexError:
        return True
    return False


def _wraparound():
    buffer = np.arange(4.0)
    cdef double[::1] view = buffer[1:3]
    cdef Py_ssize_t last = -1
    # Wrapped: view[1] = buffer[2]; unchecked: the element before the view.
    return bool(view[last] == buffer[2])


def build_checks():
    """The checks compiled into this build.

    Returns
    -------
    checks : dict
        ``{"boundscheck": bool, "wraparound": bool}``: True in the debug
        build, False in the normal one.
    """
    return {"boundscheck": _boundscheck(), "wraparound": _wraparound()}
