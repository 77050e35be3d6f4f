# Row-major BLAS helpers on top of scipy.linalg.cython_blas.
from cython cimport floating


cdef void cgemm(bint trans_a, bint trans_b, int m, int n, int k,
                floating alpha, const floating* a, int lda,
                const floating* b, int ldb,
                floating beta, floating* c, int ldc) noexcept nogil

cdef void caxpy(int n, floating alpha, const floating* x, floating* y) noexcept nogil
