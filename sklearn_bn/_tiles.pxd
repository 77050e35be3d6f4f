# The column tiles of the kernels' per-column loops, defined once.
#
# A kernel that keeps per-column values (coefficients, accumulators) copies
# them to local arrays of TILE elements: local arrays cannot alias the
# caller's buffers, so the compiler vectorizes the loops over a tile without
# runtime alias checks. Its loop over the columns is
#
#     for tile in range(n_tiles(n_cols)):
#         j0 = tile * TILE
#         width = tile_width(j0, n_cols)
#         ... columns j0 .. j0 + width - 1, local index j in range(width)
#
# (The loop's variables stay plain locals: a helper that advanced them
# through pointers kept the compiler from keeping them in registers.)

cdef enum:
    TILE = 1024


cdef inline Py_ssize_t n_tiles(Py_ssize_t n_cols) noexcept nogil:
    """Tiles of ``n_cols`` columns."""
    return (n_cols + TILE - 1) // TILE


cdef inline Py_ssize_t tile_width(Py_ssize_t j0, Py_ssize_t n_cols) noexcept nogil:
    """Columns of the tile that starts at column ``j0`` of ``n_cols``."""
    return min(<Py_ssize_t> TILE, n_cols - j0)
