"""Sphinx configuration for sklearn_bn.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The build runs the example gallery (``docs/examples/plot_*.py``, with
sphinx-gallery) and writes its pages and figures into ``docs/auto_examples/``;
an example that fails fails the build. Add ``-D plot_gallery=0`` to skip running
them while editing other pages. MathJax is served with the pages
(sphinx-mathjax-offline), so the math renders without a network.

The docs import the *compiled* package: the repository's ``sklearn_bn/`` when
it has been built (a compiled extension beside each ``.pyx``, which every
build leaves there), else the installed one.
``pip install ".[docs]"`` followed by the command above works from a fresh clone.

Intersphinx links to scikit-learn, numpy, scipy and Python are off by default
because fetching their inventories needs the network (a failed fetch is a
warning, hence an error under ``-W``). Turn them on with::

    SKLEARN_BN_DOCS_INTERSPHINX=1 python -m sphinx -W --keep-going -b html \
        docs docs/_build/html
"""

import os
import sys
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
REPO_DIR = DOCS_DIR.parent


def _source_tree_is_built(package_dir):
    """True if every Cython module in ``package_dir`` has a compiled twin."""
    pyx_files = list(package_dir.glob("*.pyx"))
    for pyx in pyx_files:
        if not any(package_dir.glob(pyx.stem + ".*.so")) and not any(
            package_dir.glob(pyx.stem + ".*.pyd")
        ):
            return False
    return True


if _source_tree_is_built(REPO_DIR / "sklearn_bn"):
    # Document this checkout rather than whatever is installed.
    sys.path.insert(0, str(REPO_DIR))
elif str(REPO_DIR) in sys.path or "" in sys.path:
    # ``python -m sphinx`` from the root puts an unbuilt checkout first.
    sys.path[:] = [p for p in sys.path if p not in ("", str(REPO_DIR))]

try:
    import sklearn_bn
except ImportError as exc:  # pragma: no cover - configuration error path
    raise ImportError(
        "The docs need an importable, compiled sklearn_bn: run "
        '`pip install ".[docs]"` (or `pip install -e ".[docs]"`) first.'
    ) from exc

print(f"sklearn_bn {sklearn_bn.__version__} from {Path(sklearn_bn.__file__).parent}")

# -- Project information ------------------------------------------------------

project = "sklearn_bn"
author = "sklearn_bn developers"
copyright = "sklearn_bn developers"
release = sklearn_bn.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ----------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.extlinks",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/, no CDN
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
# examples/ holds the gallery's sources: sphinx-gallery turns them into
# auto_examples/.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "examples"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "literal"

# :arxiv:`1502.03167` in docstrings and pages.
extlinks = {"arxiv": ("https://arxiv.org/abs/%s", "arXiv:%s")}

# autosummary writes one stub page per public class into docs/generated/
# (git-ignored); the class template lives in _templates/autosummary/.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"

# numpydoc renders Parameters/Attributes/...; the class template lists the
# methods, so numpydoc must not add a second (toctree'd) member table.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- Example gallery (sphinx-gallery) ------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    # plot_1_..., plot_2_...: the order of the stories
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("sklearn_bn",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"sklearn_bn": None},
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "remove_config_comments": True,
    "download_all_examples": False,
    "min_reported_time": 0,
    "show_memory": False,
}

# -- Intersphinx (opt-in: needs the network) ----------------------------------

INTERSPHINX_TARGETS = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "sklearn": ("https://scikit-learn.org/stable/", None),
}
if os.environ.get("SKLEARN_BN_DOCS_INTERSPHINX", "0") not in ("", "0"):
    intersphinx_mapping = INTERSPHINX_TARGETS
    intersphinx_timeout = 30
else:
    intersphinx_mapping = {}

# -- HTML output --------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn_bn {release}"
html_static_path = []
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 8,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
# Pages without sub-pages: no empty "Section Navigation" column.
html_sidebars = {
    page: [] for page in ("getting_started", "deployment", "dask", "performance")
}


# -- Links into scikit-learn's docs without intersphinx -----------------------
#
# Methods inherited from scikit-learn (``set_output``, ``set_fit_request``,
# ``score``, ...) carry docstrings with ``:ref:`` and ``:term:`` links into
# scikit-learn's own docs, and our docstrings use scikit-learn's glossary
# (``:term:`fit```) as scikit-learn's do. Without intersphinx those targets are
# unknown and Sphinx warns. Resolve them to scikit-learn's pages directly:
# every ``:term:`` (these docs have no glossary of their own), and ``:ref:``
# only in text that comes from a scikit-learn docstring, so that a broken
# label in our own pages still fails the build.

SKLEARN_URL = "https://scikit-learn.org/stable/"
SKLEARN_LABELS = {
    "metadata_routing": "metadata_routing.html",
    "df_output_transform": "modules/df_output_transform.html",
    "accuracy_score": "modules/model_evaluation.html#accuracy-score",
    "r2_score": "modules/model_evaluation.html#r2-score",
    "sphx_glr_auto_examples_miscellaneous_plot_set_output.py": (
        "auto_examples/miscellaneous/plot_set_output.html"
    ),
}


def _node_source(node):
    while node is not None:
        if node.source:
            return node.source
        node = node.parent
    return ""


def _sklearn_missing_reference(app, env, node, contnode):
    from urllib.parse import quote

    from docutils import nodes

    if node.get("refdomain") != "std" or node.get("reftype") not in ("ref", "term"):
        return None
    target = node["reftarget"]
    if node["reftype"] == "term":
        uri = SKLEARN_URL + "glossary.html#term-" + "-".join(target.lower().split())
    elif target in SKLEARN_LABELS:  # also in autosummary's one-line summaries
        uri = SKLEARN_URL + SKLEARN_LABELS[target]
    elif "docstring of sklearn." in _node_source(node):
        uri = SKLEARN_URL + "search.html?q=" + quote(target)
    else:
        return None
    ref = nodes.reference("", "", internal=False, refuri=uri, reftitle=target)
    if node["reftype"] == "ref" and not node.get("refexplicit"):
        ref += nodes.inline(target, target)
    else:
        ref += contnode
    return ref


def setup(app):
    # after intersphinx (priority 500), which resolves them properly when on
    app.connect("missing-reference", _sklearn_missing_reference, priority=900)
