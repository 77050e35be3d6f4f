"""Tests of the demo, ``python -m sklearn_bn``."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sklearn_bn import __main__ as demo

FAST = ["--epochs", "2", "--hidden", "8"]


def test_demo_compares_both_networks(capsys):
    assert demo.main([*FAST, "--activation", "tanh", "--random-state", "3"]) == 0
    out = capsys.readouterr().out
    assert "digits: 1347 training and 450 test samples, 64 features, 10 classes" in out
    assert "hidden=(8) activation=tanh epochs<=2 random_state=3" in out
    table = out[out.index("model") :].splitlines()
    assert table[0].split() == ["model", "test", "accuracy", "epochs", "seconds"]
    assert [line.split()[0] for line in table[2:4]] == [
        "MLPBNClassifier",
        "MLPClassifier",
    ]
    for line in table[2:4]:
        _, accuracy, epochs, seconds = line.split()
        assert 0 <= float(accuracy) <= 1 and int(epochs) == 2 and float(seconds) >= 0
    # After the table (two rows), what its columns mean.
    assert table[4] == ""
    explanation = "\n".join(table[5:])
    assert explanation.startswith(
        "test accuracy: on the held-out images; chance level is 0.10"
    )
    assert "epochs: epochs run, at most 2; fewer means early stopping" in explanation
    assert (
        "seconds: fit time. MLPBNClassifier trains in its compiled engine"
        in explanation
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hidden", "0"], "positive layer sizes"),
        (["--hidden", "8,x"], "positive layer sizes"),
        (["--hidden", ","], "positive layer sizes"),
        (["--epochs", "0"], "positive integer"),
        (["--epochs", "two"], "positive integer"),
        (["--activation", "softplus"], "invalid choice"),
        (["--dropout", "1"], "rate in [0, 1)"),
        (["--dropout", "x"], "rate in [0, 1)"),
        (["--virtual-batch-size", "1"], "integer >= 2"),
        (["--random-state", "-1"], "integer in [0, 2**32 - 1]"),
        (["--random-state", str(2**32)], "integer in [0, 2**32 - 1]"),
        (["--random-state", "x"], "integer in [0, 2**32 - 1]"),
    ],
)
def test_demo_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_hidden_layer_sizes_parse():
    assert demo.build_parser().parse_args(["--hidden", "32, 16,"]).hidden == (32, 16)


def test_demo_saves_the_learning_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert demo.main([*FAST, "--plot", str(path)]) == 0
    assert f"learning curves saved to {path}" in capsys.readouterr().out
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    path = tmp_path / "curves.png"
    assert demo.main([*FAST, "--plot", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err
    assert "pip install matplotlib" in err
    assert not path.exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing/curves.png", "missing does not exist"),
        ("curves.xyz", "matplotlib cannot write .xyz files; use one of: "),
        (
            "curves",
            "the file needs an extension that gives its format, such as curves.png",
        ),
        (".", "this is a folder, not a file name"),
    ],
)
def test_demo_checks_the_plot_path_before_training(
    name, message, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("matplotlib")

    def no_training(*args, **kwargs):
        raise AssertionError("the demo trained before checking --plot")

    monkeypatch.setattr(demo, "_run", no_training)
    path = tmp_path / name
    with pytest.raises(SystemExit) as exc:
        demo.main([*FAST, "--plot", str(path)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and f"--plot {path}" in captured.err
    assert "MLPBNClassifier" not in captured.out
    assert sorted(tmp_path.iterdir()) == []


def test_demo_refuses_a_read_only_folder_or_file(tmp_path, monkeypatch):
    # os.access stands in for permissions, which root (as in CI) bypasses.
    pytest.importorskip("matplotlib")
    path = tmp_path / "c.png"
    assert demo.check_plot_path(str(path)) is None
    monkeypatch.setattr(demo.os, "access", lambda p, mode: False)
    assert demo.check_plot_path(str(path)) == (
        f"--plot {path}: the folder {tmp_path} is not writable"
    )
    monkeypatch.setattr(demo.os, "access", lambda p, mode: os.path.isdir(p))
    path.write_bytes(b"")
    assert demo.check_plot_path(str(path)) == (
        f"--plot {path}: the file exists and is not writable"
    )


def test_demo_plot_formats_other_than_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.svg"
    assert demo.main([*FAST, "--plot", str(path)]) == 0
    assert b"<svg" in path.read_bytes()[:1000]


def _rows(curve_a, curve_b):
    return [
        {
            "model": "MLPBNClassifier",
            "accuracy": 0.9822,
            "epochs": len(curve_a),
            "seconds": 0.5,
            "loss_curve": curve_a,
        },
        {
            "model": "MLPClassifier",
            "accuracy": 0.1022,
            "epochs": len(curve_b),
            "seconds": 0.2,
            "loss_curve": curve_b,
        },
    ]


@pytest.mark.parametrize(
    "curve_a, scale",
    [
        (list(2.3 * 0.85 ** np.arange(40)), "log"),  # spans more than 10x
        (list(np.linspace(2.3, 0.8, 30)), "linear"),
    ],
)
def test_demo_figure_legend_and_ticks(curve_a, scale):
    pytest.importorskip("matplotlib")
    args = demo.build_parser().parse_args(
        ["--hidden", "32,32", "--activation", "logistic"]
    )
    fig = demo.make_figure(_rows(curve_a, [2.31, 2.30, 2.30]), args)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "MLPBNClassifier: test accuracy 0.982",
        "MLPClassifier: test accuracy 0.102",
    ]
    assert ax.get_yscale() == scale
    assert ax.get_title() == "digits: hidden=(32,32), logistic"
    fig.canvas.draw()
    low, high = ax.get_ylim()
    labels = [
        t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high
    ]
    assert len(labels) >= 3
    for label in labels:  # plain numbers, such as 0.05 or 2, not 10^-1
        float(label.replace("\N{MINUS SIGN}", "-"))


def test_demo_explains_early_stopping_and_chance_level():
    text = demo.explain(_rows([1.0] * 40, [2.3] * 16), 40)
    assert "- MLPClassifier stopped early, after 16 of 40 epochs." in text
    assert "- MLPClassifier is at chance level: it has not learned." in text
    assert "MLPBNClassifier stopped" not in text and "MLPBNClassifier is at" not in text


def test_python_dash_m_runs_the_demo(tmp_path):
    # What the README tells a new user to run; from another directory, so that
    # the installed (or built in place) package is the one imported.
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(demo.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_bn", *FAST],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MLPBNClassifier" in result.stdout and "MLPClassifier" in result.stdout


def test_demo_passes_dropout_and_ghost_batch_norm(capsys, monkeypatch):
    from sklearn_bn import MLPBNClassifier

    seen = []
    fit = MLPBNClassifier.fit

    def spy(self, *args, **kwargs):
        seen.append(self.get_params())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(MLPBNClassifier, "fit", spy)
    assert demo.main([*FAST, "--dropout", "0.25", "--virtual-batch-size", "16"]) == 0
    assert "dropout=0.25 virtual_batch_size=16" in capsys.readouterr().out
    assert seen[0]["dropout"] == 0.25 and seen[0]["virtual_batch_size"] == 16
