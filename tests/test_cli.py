import subprocess
import sys

import pytest

from fsslib.__main__ import main, parse_value
from fsslib.engine.episodic import train_fewshot
from fsslib.engine.trainer import TrainConfig


@pytest.fixture
def finished_run(synthetic_source, tmp_path, monkeypatch):
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    monkeypatch.setenv("FSSLIB_FAST", "1")
    config = TrainConfig(steps=2, batch_size=2, image_size=64, model_args={"feature_stage": "layer3"})
    train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    return tmp_path / "run"


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_eval_prints_the_summary(finished_run, capsys):
    assert main(["eval", str(finished_run), "episodes=10", "seeds=0,1"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "FB-IoU" in out and (finished_run / "eval_rows.csv").exists()


@pytest.mark.parametrize("argv,message", [
    (["eval", "/nonexistent/run"], "no run at /nonexistent/run"),
    (["train", "protonett"], "unknown experiment 'protonett'"),
    (["train", "/nonexistent/config.json"], "does not exist"),
])
def test_bad_input_gets_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in error_line(capsys)


def test_wrong_keys_are_named(finished_run, capsys):
    assert main(["eval", str(finished_run), "episode=10"]) == 2
    assert "unknown protocol key(s) ['episode']" in error_line(capsys)
    assert main(["train", str(finished_run / "config.json"), "stepz=3"]) == 2
    assert "unknown training config key(s) ['stepz']" in error_line(capsys)
    assert main(["train", str(finished_run / "config.json"), "model_args.scal=3"]) == 2
    assert "unknown model key 'scal'" in error_line(capsys)
    assert main(["train", str(finished_run / "config.json"), "model=panett", "--run-dir", str(finished_run.parent / "x")]) == 2
    assert "unknown model 'panett'" in error_line(capsys)


def test_values_parse_as_json_or_lists():
    assert parse_value("3") == 3 and parse_value("0,1,2") == (0, 1, 2) and parse_value("layer3") == "layer3"
    assert parse_value("null") is None and parse_value("1e-3") == 0.001


def test_the_module_entry_point_exits_with_a_line_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "fsslib", "eval", "/nonexistent"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: no run at") and "Traceback" not in result.stderr


def test_prepare_pretrain_announces_the_wait_and_prints_the_learning_curve(synthetic_source, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FSSLIB_FAST", "1")
    assert main(["prepare", "synthetic", "--pretrain"]) == 0
    out = capsys.readouterr().out
    assert "Pre-training the smallcnn backbone of synthetic fold 0" in out and "Once per fold" in out
    assert "training loss" in out and "ce" in out
    weights = list((tmp_path / "runs").glob("pretrain-*-fold0-seed0-fast/backbone.pt"))
    assert len(weights) == 1
    assert main(["prepare", "synthetic", "--pretrain"]) == 0  # done: reused, not announced again
    assert "Pre-training" not in capsys.readouterr().out
    assert main(["prepare", "pascal5i", "--pretrain"]) == 2
    assert "only the synthetic benchmark pre-trains" in error_line(capsys)
