"""Row-major wrappers of the BLAS routines the kernels use.

BLAS is column-major; a C-contiguous (row-major) matrix is the transpose of
the same buffer read column-major, so ``C = op(A) @ op(B)`` in row-major is
``C.T = op(B).T @ op(A).T`` in column-major: swap the operands, keep the flags.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, sgemm, daxpy, saxpy


cdef void cgemm(bint trans_a, bint trans_b, int m, int n, int k,
                floating alpha, const floating* a, int lda,
                const floating* b, int ldb,
                floating beta, floating* c, int ldc) noexcept nogil:
    """C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C, row-major."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int i, j
    if m == 0 or n == 0:
        return
    if k == 0:
        # BLAS leaves C untouched when k == 0 only if beta == 1.
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = beta * c[i * ldc + j] if beta != 0 else 0
        return
    # C.T = alpha * op(B).T @ op(A).T + beta * C.T, column-major: the
    # row-major c = alpha * op(a) @ op(b) + beta * c
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb,
              <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb,
              <double*> a, &lda, &beta, c, &ldc)


cdef void caxpy(int n, floating alpha, const floating* x, floating* y) noexcept nogil:
    """y += alpha * x."""
    cdef int inc = 1
    # y += alpha * x
    if floating is float:
        saxpy(&n, &alpha, <float*> x, &inc, y, &inc)
    else:
        daxpy(&n, &alpha, <double*> x, &inc, y, &inc)


def gemm(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c_out,
         bint trans_a=False, bint trans_b=False, double alpha=1.0, double beta=0.0):
    """``c_out = alpha * op(a) @ op(b) + beta * c_out`` on C-contiguous arrays.

    Thin test twin of :c:func:`cgemm`; shapes are checked here.
    """
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    if kb != k:
        raise ValueError(f"inner dimensions differ: {k} and {kb}")
    if c_out.shape[0] != m or c_out.shape[1] != n:
        raise ValueError(f"c_out has shape ({c_out.shape[0]}, {c_out.shape[1]}), "
                         f"expected ({m}, {n})")
    with nogil:
        # c_out = alpha * op(a) @ op(b) + beta * c_out
        cgemm(trans_a, trans_b, m, n, k, <floating> alpha,
              &a[0, 0] if a.shape[0] * a.shape[1] else NULL, max(a.shape[1], 1),
              &b[0, 0] if b.shape[0] * b.shape[1] else NULL, max(b.shape[1], 1),
              <floating> beta,
              &c_out[0, 0] if m * n else NULL, max(n, 1))


def axpy(double alpha, const floating[::1] x, floating[::1] y_out):
    """``y_out += alpha * x`` (test twin of :c:func:`caxpy`)."""
    if x.shape[0] != y_out.shape[0]:
        raise ValueError("x and y_out must have the same length")
    if x.shape[0] == 0:
        return
    with nogil:
        # y_out += alpha * x
        caxpy(<int> x.shape[0], <floating> alpha, &x[0], &y_out[0])
