# Batch-normalization kernels on C-contiguous (n_rows, n_cols) blocks.
#
# ``scratch``: doubles the caller allocates once, SCRATCH_PER_COLUMN per
# column (cbatch_stats uses 3 * n_cols, cbn_act_forward_train and
# cbn_act_backward 7 * n_cols). ``a_out`` may alias ``z`` and ``dz_out`` may
# alias ``da``. The training kernels take ``ld``, the distance between rows
# (>= ``n_cols``), so that they can run on a panel of columns of a wider
# block (one thread per panel), and ``z_ld`` for ``z`` (and the backward
# ``a_ld`` for ``a``): the engine keeps ``z``, and the lowest layer's delta,
# as one contiguous block per panel.
from cython cimport floating

cpdef enum:
    SCRATCH_PER_COLUMN = 8


cdef enum RowPass:
    FORWARD = 0          # out = act((z - center) * scale + shift)
    GRADIENT_SUMS = 1    # sum_g, sum_gz of g = da * act'(y)
    GRADIENT_DZ = 2      # out = scale * g - w * (q + r * (z - center))


cdef void row_pass(int act, RowPass kind, const floating* z,
                   const floating* da, const floating* a, floating* out,
                   Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t z_stride,
                   Py_ssize_t a_stride, Py_ssize_t stride,
                   const floating* sample_weight,
                   const floating* center, const floating* scale,
                   const floating* shift, const floating* q, const floating* r,
                   double* sum_g, double* sum_gz) noexcept nogil

cdef void normalize(const floating* z, floating* a_out, Py_ssize_t n_rows,
                    Py_ssize_t n_cols, Py_ssize_t stride,
                    const floating* center, const floating* scale,
                    const floating* shift, int act) noexcept nogil

cdef void cbatch_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                       const floating* sample_weight, bint ignore_nan,
                       double* mean_out, double* var_out, double* wsum_out,
                       double* scratch) noexcept nogil

cdef void cbn_act_forward_train(const floating* z, floating* a_out,
                                Py_ssize_t n_rows, Py_ssize_t n_cols,
                                Py_ssize_t z_ld, Py_ssize_t ld, const floating* gamma, const floating* beta,
                                const floating* sample_weight, double epsilon,
                                int act, double* mean_out, double* var_out,
                                double* scratch) noexcept nogil

cdef void cbn_act_backward(const floating* da, const floating* a,
                           const floating* z, floating* dz_out,
                           Py_ssize_t n_rows, Py_ssize_t n_cols,
                           Py_ssize_t z_ld, Py_ssize_t a_ld, Py_ssize_t ld,
                           const floating* gamma,
                           const floating* beta, const double* mean,
                           const double* var, double epsilon,
                           const floating* sample_weight, double wsum, int act,
                           floating* dgamma_out, floating* dbeta_out,
                           double* scratch) noexcept nogil

cdef void cupdate_running_stats(floating* running_mean, floating* running_var,
                                const double* mean, const double* var,
                                Py_ssize_t n_cols, double momentum,
                                double wsum) noexcept nogil

cdef void cupdate_running_average(floating* running_mean, floating* running_var,
                                  const double* mean, const double* var,
                                  Py_ssize_t n_cols, double count,
                                  double wsum) noexcept nogil


cdef inline void chan_merge(double* mean, double* m2, double weight, double weight_b,
                            double delta, double m2_b) noexcept nogil:
    # Chan, Golub and LeVeque's pairwise update, the one merge of statistics
    # of the package: (weight, mean, m2) absorbs a part of weight weight_b > 0
    # whose mean is mean + delta and whose sum of squared deviations (from its
    # own mean) is m2_b. m2 is the sum of squared deviations, weight * var.
    cdef double ratio = weight_b / (weight + weight_b)
    mean[0] += delta * ratio
    m2[0] += m2_b + delta * delta * (weight * ratio)


cdef inline double unbiased_count(double weight_sum, double n_positive) noexcept nogil:
    # The m of the unbiased correction m / (m - 1) of a (weighted) variance,
    # for the running statistics of the networks and of BatchNormScaler alike.
    # Weights act as repeat counts, so m is their sum; below two repeats'
    # worth (weights normalized to sum to 1, as AdaBoost passes them) that
    # would make the correction huge or negative, so m is then the number of
    # rows with positive weight. Unweighted: both are the number of rows.
    # The caller decides what m <= 1 means (no correction, or an error).
    return weight_sum if weight_sum >= 2 else n_positive
