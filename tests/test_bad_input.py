"""Bad input ends in one clear line naming the argument or file, before any work and with nothing written.

One table: each case builds its input in a fresh tmp folder, then runs the command line in-process
(``main([...])``, exit code 2, exactly one ``error:`` line on stderr) or, where no command reaches
the code, calls the data layer (one :class:`DatasetError` line). Every file under tmp is compared
before and after: a rejected command leaves no run folder, ``config.json``, index or pre-trained
backbone behind. All in fast mode: nothing slow runs even where a check would be missing.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsslib.__main__ import main
from fsslib.data import DatasetError, Episode, EpisodeDataset, EpisodePool, VOCLayoutSource, eval_transform
from fsslib.engine.trainer import TrainConfig
from fsslib.models import build_model

#: A small model that loads in milliseconds (the run folders below are written, not trained).
MODEL_ARGS = {"feature_stage": "layer3"}
STRIPED = 64  # side of the striped VOC images; their class rows vanish at half that size


def write_voc(root: Path, label_sizes: dict[str, tuple[int, int]] | None = None, indexed: bool = True) -> Path:
    """A PASCAL VOC layout: two 64x64 images for each class of fold 0 (1..5), listed in both
    splits, whose class covers every odd row (2048 pixels, the default support minimum): nearest
    resizing to 32 px keeps the even rows only, and the object vanishes. ``label_sizes`` gives
    some labels another (width, height) than their image; ``indexed`` builds the index now (as
    ``prepare`` does), so that the case itself writes nothing."""
    label_sizes = label_sizes or {}
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stems = []
    for c in range(1, 6):
        for k in range(2):
            stem = f"2008_{c}{k}"
            Image.fromarray(rng.integers(0, 256, (STRIPED, STRIPED, 3), dtype=np.uint8)).save(
                root / "JPEGImages" / f"{stem}.jpg")
            width, height = label_sizes.get(stem, (STRIPED, STRIPED))
            label = np.zeros((height, width), np.uint8)
            label[1::2] = c
            Image.fromarray(label).save(root / "SegmentationClassAug" / f"{stem}.png")
            stems.append(stem)
    for name in ("val.txt", "train_aug.txt"):
        (root / "ImageSets/Segmentation" / name).write_text("".join(f"{s}\n" for s in stems))
    if indexed:
        VOCLayoutSource(root).index("val")
    return root


def write_run(run_dir: Path, **values) -> Path:
    """A finished run folder as training leaves it (config.json, model.pt), without training."""
    config = TrainConfig(image_size=64, model_args=MODEL_ARGS, **values)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"train": asdict(config)}, indent=1))
    torch.save(build_model(config.model, **config.model_args).state_dict(), run_dir / "model.pt")
    return run_dir


def running_run(tmp: Path) -> list[str]:
    """A run another live process is training: its config.json, and its lock holding that pid."""
    run_dir = tmp / "runs" / "busy"
    run_dir.mkdir(parents=True)
    config = TrainConfig(steps=2, batch_size=2, image_size=64, model_args=MODEL_ARGS)
    (run_dir / "config.json").write_text(json.dumps({"train": asdict(config)}, indent=1))
    (run_dir / "lock").write_text(str(os.getppid()))  # pytest's parent: alive, and not this process
    return ["train", str(run_dir / "config.json")]


def empty_support(tmp: Path):
    """An episode whose support's label lost its class after indexing (the index lists it)."""
    source = VOCLayoutSource(write_voc(tmp / "VOC"))
    pool = EpisodePool(source, "val", [3])
    Image.fromarray(np.zeros((STRIPED, STRIPED), np.uint8)).save(source.label_path("2008_31"))
    dataset = EpisodeDataset(pool, eval_transform(64), episodes=[Episode("2008_30", ("2008_31",), (3,))])
    return lambda: dataset[0]


def train(*overrides: str):
    return lambda tmp: ["train", "protonet", *overrides, "--run-dir", str(tmp / "runs" / "new")]


def evaluate(*overrides: str):
    return lambda tmp: ["eval", str(write_run(tmp / "runs" / "done")), *overrides]


CASES = [
    ("steps=abc", train("steps=abc"), r"steps must be an int >= 0, got 'abc'"),
    ("steps=0", train("steps=0"), r"steps must be at least 1 for 'protonet': a run of 0 steps would store"),
    ("fold=7", train("fold=7"), r"fold must be an int in 0\.\.3 \(synthetic has 4 folds\), got 7"),
    ("shot=0", train("shot=0"), r"shot must be an int >= 1, got 0"),
    ("batch_size=0", train("batch_size=0"), r"batch_size must be an int >= 1, got 0"),
    ("lr=-1", train("lr=-1"), r"lr must be a number > 0, got -1"),
    ("unknown key", train("lrr=0.1"), r"unknown training config key\(s\) \['lrr'\]"),
    ("unknown model key", train("model_args.lrr=0.1"), r"unknown model key 'lrr' for protonet; valid: \["),
    ("eval episodes=0", evaluate("episodes=0"), r"episodes must be an int >= 1, got 0"),
    ("eval shots=0", evaluate("shots=0"), r"shots must be ints >= 1 \(e\.g\. shots=1,5\), got \(0,\)"),
    ("eval seeds=abc", evaluate("seeds=abc"), r"seeds must be ints >= 0 .*, got \('abc',\)"),
    ("ablation --fold 4", lambda tmp: ["ablation", "panet", "--fold", "4"], r"--fold must be in 0\.\.3"),
    ("ablation --seeds a,b", lambda tmp: ["ablation", "panet", "--seeds", "a,b"],
     r"--seeds must be comma-separated ints >= 0 \(e\.g\. --seeds 0,1,2\), got 'a,b'"),
    ("run in use", running_run, r"run .*busy is being trained by process \d+; wait for it to finish"),
    ("label size", lambda tmp: ["prepare", "pascal5i", "--root",
                                str(write_voc(tmp / "VOC", {"2008_21": (40, 30)}, indexed=False))],
     r"label map .*2008_21\.png is 40x30 but its image .*2008_21\.jpg is 64x64"),
    ("support vanishes in the resize", lambda tmp: ["eval", str(write_run(
        tmp / "runs" / "voc", benchmark="pascal5i", data_root=str(write_voc(tmp / "VOC")))),
        "image_size=32", "episodes=4", "seeds=0"],
     r"support image '2008_\d\d' has 2048 pixels of class \d, but none left once its label is resized "
     r"to the network input \(32x32\)"),
    ("empty support mask", empty_support, r"support image '2008_31' has no pixel of class 3 in its label"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("make,pattern", [pytest.param(make, pattern, id=name) for name, make, pattern in CASES])
def test_bad_input_ends_in_one_line_and_writes_nothing(make, pattern, synthetic_source, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FSSLIB_FAST", "1")
    (tmp_path / "runs").mkdir(exist_ok=True)
    case = make(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    if callable(case):  # no command reaches this check: the data layer's own error
        with pytest.raises(DatasetError) as error:
            case()
        line = str(error.value)
        assert len(line.splitlines()) == 1, line
    else:
        assert main(case) == 2
        err = capsys.readouterr().err
        # What the terminal shows: a progress bar (eval's feature pass) is redrawn over by '\r'
        # and erased when it closes; every other character is the error line.
        shown = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
        shown = [line for line in shown if line.strip()]
        assert "Traceback" not in err and len(shown) == 1, err
        assert shown[0].startswith("error: "), err
        line = shown[0][len("error: "):]
    assert re.match(pattern, line), line  # the line opens with what is wrong
    assert snapshot(tmp_path) == before  # nothing written: no run folder, config.json, index or backbone
    assert not (tmp_path / "runs" / "new").exists() and not list((tmp_path / "runs").glob("pretrain-*"))
