# Batch-normalization kernels on blocks of rows of a panel of columns.
#
# ``scratch``: doubles the caller allocates once, SCRATCH_PER_COLUMN per
# column (cbatch_stats uses 3 * n_cols, cbn_act_forward_train and
# cbn_act_backward 7 * n_cols). The training kernels take a Panel: they can
# run on a panel of columns of a wider block (one thread per panel), with
# ``z`` and the layer's output in blocks of their own layout (the engine
# keeps ``z``, and the lowest layer's delta, as one contiguous block per
# panel).
from cython cimport floating

cpdef enum:
    SCRATCH_PER_COLUMN = 8


cdef struct Panel:
    Py_ssize_t n_rows
    Py_ssize_t n_cols
    Py_ssize_t z_ld              # distance between two rows of z
    Py_ssize_t a_ld              # ... of the layer's output a
    Py_ssize_t ld                # ... of the gradients da and dz (backward)
    const char* sample_weight    # the rows' weights, in the kernels' dtype (NULL: none)


cdef struct Statistics:
    # A panel's batch statistics (per column), as the forward pass wrote them.
    const double* mean
    const double* var            # ddof=0
    double epsilon
    double weight_sum            # of the rows (their number when unweighted)


cdef void cbatch_stats(const floating* x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                       const floating* sample_weight, bint ignore_nan,
                       double* mean_out, double* var_out, double* wsum_out,
                       double* scratch) noexcept nogil

cdef void cbn_act_forward_train(const floating* z, floating* a_out, const Panel* panel,
                                const floating* gamma, const floating* beta,
                                double epsilon, int act, double* mean_out,
                                double* var_out, double* scratch) noexcept nogil

cdef void cbn_act_normalize(const floating* z, floating* a_out, const Panel* panel,
                            const floating* gamma, const floating* beta,
                            const double* mean, const double* var, double epsilon,
                            int act, double* scratch) noexcept nogil

cdef void cbatch_stats_rows(const floating* z, const Panel* panel, double* mean_out,
                            double* var_out, double* weight_sum_out,
                            double* scratch) noexcept nogil

cdef void cbn_act_backward_sums(const floating* da, const floating* a,
                                const floating* z, const Panel* panel,
                                const floating* gamma, const floating* beta,
                                const Statistics* stats, int act,
                                double* sum_g, double* sum_gz,
                                double* scratch) noexcept nogil

cdef void cbn_gamma_beta_gradients(const Statistics* stats, Py_ssize_t n,
                                   const floating* gamma, const floating* beta,
                                   const double* sum_g, const double* sum_gz,
                                   floating* dgamma_out, floating* dbeta_out,
                                   double* scratch) noexcept nogil

cdef void cbn_act_backward_dz(const floating* da, floating* dz_out, const floating* a,
                              const floating* z, const Panel* panel, int act,
                              const double* scratch) noexcept nogil

cdef void cbn_act_backward(const floating* da, floating* dz_out, const floating* a,
                           const floating* z, const Panel* panel, const floating* gamma,
                           const floating* beta, const Statistics* stats, int act,
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
