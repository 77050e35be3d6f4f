"""Tests of the demo, ``python -m sklearn_bn``."""

import os
import subprocess
import sys

import pytest

from sklearn_bn import __main__ as demo

FAST = ["--epochs", "2", "--hidden", "8"]


def test_demo_compares_both_networks(capsys):
    assert demo.main([*FAST, "--activation", "tanh", "--random-state", "3"]) == 0
    out = capsys.readouterr().out
    assert "digits: 1347 training and 450 test samples, 64 features, 10 classes" in out
    assert "hidden=(8) activation=tanh epochs<=2 random_state=3" in out
    table = out[out.index("model"):].splitlines()
    assert table[0].split() == ["model", "test", "accuracy", "epochs", "seconds"]
    assert [line.split()[0] for line in table[2:]] == ["MLPBNClassifier", "MLPClassifier"]
    for line in table[2:]:
        _, accuracy, epochs, seconds = line.split()
        assert 0 <= float(accuracy) <= 1 and int(epochs) == 2 and float(seconds) >= 0


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "0"], "positive layer sizes"),
    (["--hidden", "8,x"], "positive layer sizes"),
    (["--hidden", ","], "positive layer sizes"),
    (["--epochs", "0"], "positive integer"),
    (["--epochs", "two"], "positive integer"),
    (["--activation", "softplus"], "invalid choice"),
])
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
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not path.exists()


def test_python_dash_m_runs_the_demo(tmp_path):
    # What the README tells a new user to run; from another directory, so that
    # the installed (or built in place) package is the one imported.
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(demo.__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_bn", *FAST], capture_output=True, text=True,
        cwd=tmp_path, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MLPBNClassifier" in result.stdout and "MLPClassifier" in result.stdout
