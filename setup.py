"""Build the Cython extensions of sklearn_bn.

Compiler directives are set once here. Set ``SKLEARN_BN_CYTHON_DEBUG=1`` in the
environment to build with bounds, wraparound and initialization checks on
(slower, but every out-of-bounds memoryview access raises ``IndexError``).
The switch takes effect on any build, in place or not, without ``--force``:

* each mode has its own directory of generated C (``build/cython-debug``,
  ``build/cython-release``), so Cython never reuses the other mode's C;
* ``build/cython-config.json`` records the configuration of the last build
  (mode, directives, compiler flags) and every extension depends on it. It is
  rewritten only when the configuration changes, so then every compiled module
  is older than it and gets rebuilt, while a build in the same configuration
  still skips up-to-date modules.

The training engine uses OpenMP when the compiler supports it (checked by
compiling a small program); without it, or with ``SKLEARN_BN_NO_OPENMP=1``,
it is built serial and trains on one thread (plus BLAS's threads).

Every build also leaves a copy of the compiled modules beside their sources
(what an in-place build does), so that the clone itself is importable after
``pip install .``: ``python -m sklearn_bn`` run from the clone's root, where
Python finds ``sklearn_bn/`` before the installed copy, runs the same build.

Before Cython runs, every ``sklearn_bn/*.tp`` template is rendered (Tempita,
as scikit-learn renders its ``.pyx.tp`` files) beside it, without the
``.tp``: ``_activations.pxd.tp`` with the activations of
``sklearn_bn/_activation_registry.py``. A rendered file is rewritten only when
its content changes, so that an unchanged one does not trigger rebuilds; it is
never committed (``.gitignore``).
"""

import glob
import json
import os
import runpy
import shutil
import tempfile
import warnings

import Cython
import numpy as np
from Cython import Tempita
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("SKLEARN_BN_CYTHON_DEBUG", "0") not in ("", "0")
NO_OPENMP = os.environ.get("SKLEARN_BN_NO_OPENMP", "0") not in ("", "0")
MODE = "debug" if DEBUG else "release"

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

# No code reads errno: this lets sqrt vectorize (the Adam step).
COMPILE_ARGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno"]

MODULES = [
    "_team",
    "_blas",
    "_activations",
    "_batchnorm",
    "_scaling",
    "_optimizers",
    "_training",
    "_debug",
]
# Modules that run OpenMP teams (the scaler's kernels and the engine).
OPENMP_MODULES = {
    f"sklearn_bn.{name}" for name in ("_team", "_batchnorm", "_scaling", "_training")
}

OPENMP_CHECK = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel
    {
        #pragma omp atomic
        n += 1;
    }
    return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(HERE, "build")
CYTHON_DIR = os.path.join(BUILD_DIR, f"cython-{MODE}")
CONFIG_STAMP = os.path.join(BUILD_DIR, "cython-config.json")


def _write_if_changed(path, content):
    """Write ``content`` to ``path`` unless it holds it already; True if written.

    An unreadable or unwritable stamp counts as changed: the caller then
    rebuilds everything, which is slow but never wrong.
    """
    try:
        with open(path) as f:
            if f.read() == content:
                return False
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    except OSError as exc:
        warnings.warn(f"could not record the build configuration in {path}: {exc}")
    return True


def _render_templates():
    """Render every ``sklearn_bn/*.tp`` beside it, with the activation
    registry's lists (read from its file: nothing of the package is built
    yet)."""
    registry = runpy.run_path(
        os.path.join(HERE, "sklearn_bn", "_activation_registry.py")
    )
    for template in sorted(glob.glob(os.path.join(HERE, "sklearn_bn", "*.tp"))):
        with open(template) as f:
            text = Tempita.sub(
                f.read(), hidden=registry["HIDDEN"], output=registry["OUTPUT"]
            )
        _write_if_changed(template[: -len(".tp")], text)


def _record_configuration():
    """Record this build's configuration; return whether Cython must rerun.

    The C of one mode depends on that mode's directives and on Cython's
    version only: rerun Cython when they differ from the ones that generated
    ``CYTHON_DIR``'s C.
    """
    _write_if_changed(
        CONFIG_STAMP,
        json.dumps(
            {
                "mode": MODE,
                "directives": COMPILER_DIRECTIVES,
                "compile_args": COMPILE_ARGS,
                "no_openmp": NO_OPENMP,
            },
            sort_keys=True,
            indent=1,
        )
        + "\n",
    )
    return _write_if_changed(
        os.path.join(CYTHON_DIR, "directives.json"),
        json.dumps(
            {"cython": Cython.__version__, "directives": COMPILER_DIRECTIVES},
            sort_keys=True,
            indent=1,
        )
        + "\n",
    )


class BuildExt(build_ext):
    """Add the OpenMP flags to the modules that use threads, if they work;
    copy the compiled modules beside their sources."""

    def run(self):
        super().run()
        if not self.inplace:
            self._copy_beside_sources()

    def _copy_beside_sources(self):
        for ext in self.extensions:
            built = self.get_ext_fullpath(ext.name)
            target = os.path.join(
                HERE, *ext.name.split(".")[:-1], os.path.basename(built)
            )
            if os.path.abspath(built) == os.path.abspath(target):
                continue
            try:
                shutil.copyfile(built, target)
            except OSError as exc:  # a read-only checkout: the install is fine
                warnings.warn(f"could not copy {built} beside its source: {exc}")

    def build_extensions(self):
        flags = self._openmp_flags()
        for ext in self.extensions:
            if ext.name in OPENMP_MODULES:
                ext.extra_compile_args = list(ext.extra_compile_args) + flags
                if self.compiler.compiler_type != "msvc":
                    ext.extra_link_args = list(ext.extra_link_args) + flags
        super().build_extensions()

    def _openmp_flags(self):
        if NO_OPENMP:
            return []
        flags = ["/openmp"] if self.compiler.compiler_type == "msvc" else ["-fopenmp"]
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "openmp_check.c")
            with open(source, "w") as f:
                f.write(OPENMP_CHECK)
            try:
                objects = self.compiler.compile(
                    [source], output_dir=tmp, extra_postargs=flags
                )
                self.compiler.link_executable(
                    objects,
                    "openmp_check",
                    output_dir=tmp,
                    extra_postargs=[]
                    if self.compiler.compiler_type == "msvc"
                    else flags,
                )
            except Exception as exc:  # CompileError, LinkError
                warnings.warn(
                    f"OpenMP is not available ({exc}); the training engine is "
                    "built without threads."
                )
                return []
        return flags


extensions = [
    Extension(
        f"sklearn_bn.{name}",
        [f"sklearn_bn/{name}.pyx"],
        include_dirs=[np.get_include(), "sklearn_bn"],  # _team.h
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
        # A change of configuration rewrites the stamp: everything is rebuilt.
        depends=[CONFIG_STAMP],
    )
    for name in MODULES
]

N_JOBS = os.cpu_count() or 1

_render_templates()

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=COMPILER_DIRECTIVES,
        include_path=["."],
        nthreads=N_JOBS,
        build_dir=os.path.relpath(CYTHON_DIR),
        force=_record_configuration() or None,
    ),
    cmdclass={"build_ext": BuildExt},
    options={"build_ext": {"parallel": N_JOBS}},
)
