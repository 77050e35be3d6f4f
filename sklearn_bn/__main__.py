"""``python -m sklearn_bn``: MLPBNClassifier next to scikit-learn's MLPClassifier.

Both networks get the same data (scikit-learn's digits, pixels scaled to
[0, 1]), the same train/test split, hidden layers, activation, epoch budget and
random state; the demo prints test accuracy, epochs run and seconds side by
side, and with ``--plot FILE`` saves both learning curves.

Run ``python -m sklearn_bn --help`` for the options.
"""

import argparse
import sys
import time
import warnings

DATASET = "digits"


def _parse_hidden(text):
    try:
        sizes = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer sizes such as '64,64', got {text!r}"
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
        choices=["relu", "tanh", "logistic", "identity"],
        default="relu",
        help="hidden activation (default: relu)",
    )
    parser.add_argument(
        "--random-state",
        type=int,
        default=0,
        help="seed of the split and of both networks (default: 0)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        default=None,
        help="save both learning curves (loss_curve_) to FILE (needs matplotlib)",
    )
    return parser


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
    return [
        ("MLPBNClassifier", MLPBNClassifier(**common)),
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
    >>> row = {"model": "MLPBNClassifier", "accuracy": 0.97, "epochs": 40, "seconds": 1.5}
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


def _plot(rows, path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for row in rows:
        curve = row["loss_curve"]
        ax.plot(range(1, len(curve) + 1), curve, label=row["model"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (loss_curve_)")
    ax.set_yscale("log")
    hidden = ",".join(str(h) for h in args.hidden)
    ax.set_title(f"{DATASET}: hidden=({hidden}), {args.activation}")
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    """Run the demo; return the process exit status (0 on success)."""
    args = build_parser().parse_args(argv)

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: --plot needs matplotlib, which is not installed.\n"
                "Install it with `pip install matplotlib` "
                "(or `pip install \".[docs]\"` from a clone of sklearn_bn).",
                file=sys.stderr,
            )
            return 1

    X_train, X_test, y_train, y_test = _load_data(args.random_state)
    hidden = ",".join(str(h) for h in args.hidden)
    print(
        f"{DATASET}: {X_train.shape[0]} training and {X_test.shape[0]} test samples, "
        f"{X_train.shape[1]} features, {len(set(y_train))} classes"
    )
    print(
        f"hidden=({hidden}) activation={args.activation} epochs<={args.epochs} "
        f"random_state={args.random_state}\n"
    )

    rows = _run(_models(args), X_train, X_test, y_train, y_test)
    print(format_table(rows))

    if args.plot is not None:
        _plot(rows, args.plot, args)
        print(f"\nlearning curves saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
