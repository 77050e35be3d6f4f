# Return types that compile a hot function twice, for the baseline and for
# x86-64-v3 (AVX2, FMA), with GCC on x86-64 Linux; the dynamic loader picks
# the one the CPU supports (``target_clones``). Elsewhere, or when
# ``SKLEARN_BN_NO_TARGET_CLONES`` is defined (for example
# ``CFLAGS=-DSKLEARN_BN_NO_TARGET_CLONES``), they are plain types.

cdef extern from *:
    """
    #ifndef SKLEARN_BN_CLONES
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \\
        && defined(__linux__) && defined(__GLIBC__) \\
        && !defined(SKLEARN_BN_NO_TARGET_CLONES)
    #if __GNUC__ >= 12
    #define SKLEARN_BN_CLONES \\
        __attribute__((target_clones("arch=x86-64-v3", "default")))
    #else
    #define SKLEARN_BN_CLONES __attribute__((target_clones("avx2", "default")))
    #endif
    #else
    #define SKLEARN_BN_CLONES
    #endif
    #endif
    """
    ctypedef void simd_void "SKLEARN_BN_CLONES void"


# Return type of the parts of a hot function that are written as functions of
# their own: always inlined into it, so that its local arrays stay local (no
# aliasing with the caller's buffers: the loops vectorize without checks).
cdef extern from *:
    """
    #ifndef SKLEARN_BN_ALWAYS_INLINE
    #if defined(__GNUC__)
    #define SKLEARN_BN_ALWAYS_INLINE __attribute__((always_inline))
    #else
    #define SKLEARN_BN_ALWAYS_INLINE
    #endif
    #endif
    """
    ctypedef void inline_void "SKLEARN_BN_ALWAYS_INLINE void"
