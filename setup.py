"""Build the Cython extensions of sklearn_bn.

Compiler directives are set once here. Set ``SKLEARN_BN_CYTHON_DEBUG=1`` in the
environment to rebuild with bounds, wraparound and initialization checks on
(slower, but every out-of-bounds memoryview access raises ``IndexError``).
"""

import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SKLEARN_BN_CYTHON_DEBUG", "0") not in ("", "0")

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

MODULES = ["_blas", "_activations", "_batchnorm", "_scaling", "_training"]

extensions = [
    Extension(
        f"sklearn_bn.{name}",
        [f"src/sklearn_bn/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        # No code reads errno: this lets sqrt vectorize (the Adam step).
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno"],
    )
    for name in MODULES
]

N_JOBS = os.cpu_count() or 1

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=COMPILER_DIRECTIVES,
        include_path=["src"],
        nthreads=N_JOBS,
    ),
    options={"build_ext": {"parallel": N_JOBS}},
)
