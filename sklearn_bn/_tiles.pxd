# The column tiles of the kernels' per-column loops, defined once.
#
# A kernel that keeps per-column values (coefficients, accumulators) copies
# them to local arrays of TILE elements: local arrays cannot alias the
# caller's buffers, so the compiler vectorizes the loops over a tile without
# runtime alias checks. Its loop over the columns is
#
#     j0 = width = 0
#     while next_tile(&j0, &width, n_cols):
#         ... columns j0 .. j0 + width - 1, local index j in range(width)

cdef enum:
    TILE = 1024


cdef inline bint next_tile(Py_ssize_t* j0, Py_ssize_t* width,
                           Py_ssize_t n_cols) noexcept nogil:
    """Move the tile ``[j0, j0 + width)`` to the next one of the columns
    before ``n_cols``; false when there is none (start from ``width = 0``)."""
    j0[0] += width[0]
    width[0] = min(<Py_ssize_t> TILE, n_cols - j0[0])
    return width[0] > 0
