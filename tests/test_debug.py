"""The build is the one its switch asks for (sklearn_bn._debug).

Run the suite with ``SKLEARN_BN_CYTHON_DEBUG=1`` in the environment on the
bounds-checked build, as ``.ci/run`` does; without it, on the normal build.
"""

import os

from sklearn_bn._debug import build_checks

DEBUG = os.environ.get("SKLEARN_BN_CYTHON_DEBUG", "0") not in ("", "0")


def test_build_checks_follow_the_debug_switch():
    expected = {"boundscheck": DEBUG, "wraparound": DEBUG}
    assert build_checks() == expected, (
        "the compiled checks do not match SKLEARN_BN_CYTHON_DEBUG="
        f"{os.environ.get('SKLEARN_BN_CYTHON_DEBUG')!r}: rebuild with the switch "
        "set as it is for this run"
    )
