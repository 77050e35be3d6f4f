"""``python -m sklearn_bn``: MLPBNClassifier next to scikit-learn's MLPClassifier.

Both networks get the same data (scikit-learn's digits, pixels scaled to
[0, 1]), the same train/test split, hidden layers, activation, epoch budget and
random state; the demo prints test accuracy, epochs run and seconds side by
side, says what the columns mean, and with ``--plot FILE`` saves both learning
curves (the file's path and format are checked before training).

Run ``python -m sklearn_bn --help`` for the options.
"""

import argparse
import os
import sys
import textwrap
import time
import warnings

from sklearn_bn._activation_registry import ACTIVATIONS

DATASET = "digits"
N_CLASSES = 10


def _parse_hidden(text):
    try:
        sizes = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            "expected comma-separated positive layer sizes such as '64,64', "
            f"got {text!r}"
        )
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text):
    """A seed numpy's random state takes: an integer in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, 2**32 - 1], got {text!r}"
        )
    return value


def _rate(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1), got {text!r}")
    return value


def _virtual_batch_size(text):
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m sklearn_bn",
        description=(
            "Train sklearn_bn.MLPBNClassifier and sklearn.neural_network.MLPClassifier "
            "on scikit-learn's digits data set with the same settings and compare them."
        ),
    )
    parser.add_argument(
        "--hidden",
        type=_parse_hidden,
        default=(64, 64),
        metavar="SIZES",
        help="hidden layer sizes, comma-separated (default: 64,64)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=40,
        help="max_iter of both networks: the epoch budget (default: 40)",
    )
    parser.add_argument(
        "--activation",
        choices=list(ACTIVATIONS),
        default="relu",
        help="hidden activation (default: relu)",
    )
    parser.add_argument(
        "--dropout",
        type=_rate,
        default=0.0,
        metavar="P",
        help=(
            "MLPBNClassifier's dropout rate on every hidden layer, in [0, 1) "
            "(default: 0)"
        ),
    )
    parser.add_argument(
        "--virtual-batch-size",
        type=_virtual_batch_size,
        default=None,
        metavar="N",
        help=(
            "MLPBNClassifier's ghost batch norm: normalize chunks of about N rows "
            "of each minibatch, N >= 2 (default: the whole minibatch)"
        ),
    )
    parser.add_argument(
        "--random-state",
        type=_seed,
        default=0,
        help="seed of the split and of both networks (default: 0)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        default=None,
        help=(
            "save both learning curves (loss_curve_) to FILE; its extension gives "
            "the format (.png, .pdf, .svg, ...). Needs matplotlib"
        ),
    )
    return parser


def check_plot_path(path):
    """Return why ``--plot path`` cannot be written, or None if it can.

    Checked before any training: the format (from the extension) must be one
    matplotlib writes, the folder must exist and be writable, and the path
    must not be a folder.

    Examples
    --------
    >>> check_plot_path("curves.png") is None
    True
    >>> print(check_plot_path("curves"))
    --plot curves: the file needs an extension that gives its format, such as curves.png
    """
    from matplotlib.backend_bases import FigureCanvasBase

    if os.path.isdir(path):
        return f"--plot {path}: this is a folder, not a file name"
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1]
    extension = extension[1:].lower()
    if not extension:
        return (
            f"--plot {path}: the file needs an extension that gives its format, "
            f"such as {os.path.basename(path) or 'curves'}.png"
        )
    if extension not in formats:
        return (
            f"--plot {path}: matplotlib cannot write .{extension} files; use one "
            f"of: {', '.join('.' + f for f in sorted(formats))}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--plot {path}: the folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"--plot {path}: the folder {folder} is not writable"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"--plot {path}: the file exists and is not writable"
    return None


def _load_data(random_state):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    # The same fixed preprocessing for both networks: pixel values 0..16 -> [0, 1].
    X = X / 16.0
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=random_state)


def _models(args):
    from sklearn.neural_network import MLPClassifier

    from sklearn_bn import MLPBNClassifier

    common = dict(
        hidden_layer_sizes=args.hidden,
        activation=args.activation,
        max_iter=args.epochs,
        random_state=args.random_state,
    )
    options = dict(dropout=args.dropout, virtual_batch_size=args.virtual_batch_size)
    return [
        ("MLPBNClassifier", MLPBNClassifier(**common, **options)),
        ("MLPClassifier", MLPClassifier(**common)),
    ]


def _run(models, X_train, X_test, y_train, y_test):
    from sklearn.exceptions import ConvergenceWarning

    rows = []
    for name, model in models:
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Stopping at the epoch budget is the point of the comparison.
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            model.fit(X_train, y_train)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "model": name,
                "accuracy": model.score(X_test, y_test),
                "epochs": model.n_iter_,
                "seconds": seconds,
                "loss_curve": list(model.loss_curve_),
            }
        )
    return rows


def format_table(rows):
    """Format the result rows as a fixed-width text table.

    Examples
    --------
    >>> row = {"model": "MLPBNClassifier", "accuracy": 0.97, "epochs": 40,
    ...        "seconds": 1.5}
    >>> print(format_table([row]))
    model               test accuracy  epochs   seconds
    ---------------------------------------------------
    MLPBNClassifier            0.9700      40      1.50
    """
    header = f"{'model':<18}{'test accuracy':>15}{'epochs':>8}{'seconds':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['model']:<18}{row['accuracy']:>15.4f}"
            f"{row['epochs']:>8d}{row['seconds']:>10.2f}"
        )
    return "\n".join(lines)


def explain(rows, epochs):
    """What the table's columns mean, and what stands out in these rows.

    Examples
    --------
    >>> rows = [{"model": "MLPBNClassifier", "accuracy": 0.97, "epochs": 40},
    ...         {"model": "MLPClassifier", "accuracy": 0.08, "epochs": 17}]
    >>> print(explain(rows, 40))  # doctest: +ELLIPSIS
    test accuracy: ...
    - MLPClassifier stopped early, after 17 of 40 epochs.
    - MLPClassifier is at chance level: it has not learned.
    """
    chance = 1 / N_CLASSES
    columns = [
        f"test accuracy: on the held-out images; chance level is {chance:.2f} "
        f"({N_CLASSES} classes).",
        f"epochs: epochs run, at most {epochs}; fewer means early stopping (the "
        "training loss improved by less than tol=1e-4 for 10 epochs in a row).",
        "seconds: fit time. MLPBNClassifier trains in its compiled engine (Cython, "
        "without the GIL); MLPClassifier in scikit-learn's numpy code.",
    ]
    notes = []
    for row in rows:
        if row["epochs"] < epochs:
            notes.append(
                f"- {row['model']} stopped early, after {row['epochs']} of "
                f"{epochs} epochs."
            )
        if row["accuracy"] < 2 * chance:
            notes.append(f"- {row['model']} is at chance level: it has not learned.")
    wrapped = [
        textwrap.fill(text, width=79, subsequent_indent="    ") for text in columns
    ]
    return "\n".join(wrapped + notes)


def make_figure(rows, args):
    """The learning curves of ``rows`` as a matplotlib figure.

    One line per model, its test accuracy in the legend; the training loss on
    a log scale when it spans more than a factor of 10 (ticks at 1, 2, 5 times
    powers of ten, written as plain numbers), else on a linear scale.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.subplots()
    for row in rows:
        curve = row["loss_curve"]
        ax.plot(
            range(1, len(curve) + 1),
            curve,
            marker="o" if len(curve) < 15 else None,
            label=f"{row['model']}: test accuracy {row['accuracy']:.3f}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (loss_curve_)")
    losses = [loss for row in rows for loss in row["loss_curve"] if loss > 0]
    if losses and max(losses) > 10 * min(losses):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    hidden = ",".join(str(h) for h in args.hidden)
    ax.set_title(f"{DATASET}: hidden=({hidden}), {args.activation}")
    ax.legend()
    return fig


def _plot(rows, path, args):
    make_figure(rows, args).savefig(path, dpi=120)


def main(argv=None):
    """Run the demo; return the process exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: --plot needs matplotlib, which is not installed.\n"
                "Install it with `pip install matplotlib`, then run the demo again.",
                file=sys.stderr,
            )
            return 1
        problem = check_plot_path(args.plot)
        if problem is not None:
            parser.error(problem)  # exits with status 2, before any training

    X_train, X_test, y_train, y_test = _load_data(args.random_state)
    hidden = ",".join(str(h) for h in args.hidden)
    print(
        f"{DATASET}: {X_train.shape[0]} training and {X_test.shape[0]} test samples, "
        f"{X_train.shape[1]} features, {len(set(y_train))} classes"
    )
    extras = "".join(
        f" {name}={value}"
        for name, value in [
            ("dropout", args.dropout),
            ("virtual_batch_size", args.virtual_batch_size),
        ]
        if value
    )
    print(
        f"hidden=({hidden}) activation={args.activation} epochs<={args.epochs} "
        f"random_state={args.random_state}{extras}\n"
    )

    rows = _run(_models(args), X_train, X_test, y_train, y_test)
    print(format_table(rows))
    print()
    print(explain(rows, args.epochs))

    if args.plot is not None:
        _plot(rows, args.plot, args)
        print(f"\nlearning curves saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
