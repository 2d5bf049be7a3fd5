import json
import math
import os
from pathlib import Path

import pytest
import torch

from fsslib.engine.episodic import load_run, train_fewshot
from fsslib.engine.trainer import (
    TrainConfig,
    _rng_states,
    _set_rng_states,
    learning_rate_factor,
    pin_memory_for,
    read_log,
)


def small_config(**overrides):
    values = dict(model="protonet", steps=6, batch_size=2, checkpoint_every=2, log_every=1, lr=1e-3,
                  image_size=64, model_args={"feature_stage": "layer3"})
    values.update(overrides)
    return TrainConfig(**values)


def test_a_resumed_run_ends_with_the_same_weights(synthetic_source, tmp_path):
    config = small_config()
    straight = train_fewshot(config, tmp_path / "straight", progress=False, source=synthetic_source)
    train_fewshot(config, tmp_path / "resumed", progress=False, stop_after=3, source=synthetic_source)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists() and not (tmp_path / "resumed" / "model.pt").exists()
    resumed = train_fewshot(config, tmp_path / "resumed", progress=False, source=synthetic_source)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert read_log(tmp_path / "resumed")["step"].tolist() == list(range(1, 7))  # no duplicated rows
    model, stored = load_run(tmp_path / "resumed")
    assert stored == config and torch.equal(next(iter(model.state_dict().values())),
                                            next(iter(straight.state_dict().values())))


def test_training_changes_the_weights_and_logs_the_loss(synthetic_source, tmp_path):
    torch.manual_seed(0)
    config = small_config(steps=4)
    model = train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    from fsslib.models import build_model

    torch.manual_seed(config.seed)
    initial = build_model(config.model, **config.model_args)
    changed = [n for (n, a), b in zip(model.state_dict().items(), initial.state_dict().values())
               if a.is_floating_point() and not torch.equal(a, b)]
    assert changed
    log = read_log(tmp_path / "run")
    assert {"step", "loss", "lr", "query_ce"} <= set(log.columns) and log["loss"].notna().all()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == 4


def test_a_run_directory_refuses_another_config(synthetic_source, tmp_path):
    train_fewshot(small_config(steps=2), tmp_path / "run", progress=False, source=synthetic_source)
    with pytest.raises(ValueError, match="differs in \\['lr'\\]"):
        train_fewshot(small_config(steps=2, lr=0.1), tmp_path / "run", progress=False, source=synthetic_source)


@pytest.mark.parametrize("schedule,expected", [("cosine", [1.0, 0.5, 0.0]), ("constant", [1.0, 1.0, 1.0]),
                                               ("poly", [1.0, 0.5 ** 0.9, 0.0])])
def test_schedules(schedule, expected):
    config = TrainConfig(steps=10, schedule=schedule)
    got = [learning_rate_factor(config, s) for s in (0, 5, 10)]
    assert got == pytest.approx(expected)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="unknown training config key"):
        TrainConfig.from_dict({"stepz": 3})


def test_cached_training_needs_a_frozen_backbone_and_trains_a_head(synthetic_source, tmp_path):
    args = {"feature_stage": "layer3", "frozen_stages": "all", "freeze_bn": True, "scale": 20.0}
    config = small_config(model="panet", model_args=args, augment=False, steps=3)
    # PANet's head has no parameters: give the optimiser something, the backbone stays frozen.
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_fewshot(config, tmp_path / "images", progress=False, source=synthetic_source)
    bad = small_config(model_args={**args, "frozen_stages": ("layer1",)}, augment=False, cache_features=True)
    with pytest.raises(ValueError, match="cache_features=True needs"):
        train_fewshot(bad, tmp_path / "bad", progress=False, source=synthetic_source)
    head = small_config(model="pfenet", model_args={"frozen_stages": "all", "freeze_bn": True, "width": 16},
                        augment=False, cache_features=True, steps=2, image_size=128)
    model = train_fewshot(head, tmp_path / "pfenet", progress=False, source=synthetic_source)
    assert (tmp_path / "pfenet" / "model.pt").exists() and model.learnable_parameters() > 0


def test_cached_batches_equal_image_batches(synthetic_source):
    from fsslib.data import collate_episodes
    from fsslib.engine.episodic import cached_fewshot_dataset, fewshot_dataset
    from fsslib.models import build_model

    config = small_config(augment=False, cache_features=True, image_size=128,
                          model_args={"feature_stage": "layer3", "frozen_stages": "all", "freeze_bn": True})
    torch.manual_seed(0)
    model = build_model(config.model, **config.model_args).eval()
    cached = collate_episodes([cached_fewshot_dataset(config, model, synthetic_source)[i] for i in (0, 1)])
    images = collate_episodes([fewshot_dataset(config, synthetic_source)[i] for i in (0, 1)])
    assert cached["query_name"] == images["query_name"]
    assert torch.equal(cached["support_masks"], images["support_masks"])
    with torch.no_grad():
        torch.testing.assert_close(model(cached)["logits"], model(images)["logits"], atol=1e-4, rtol=1e-4)


def test_a_run_written_before_a_new_config_field_still_resumes(synthetic_source, tmp_path):
    config = small_config(steps=2)
    train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    del stored["train"]["cache_features"]  # as written by an older fsslib
    (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
    train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)  # loads, no error


def test_a_compiled_forward_trains_like_the_plain_one(synthetic_source, tmp_path):
    # The "eager" backend traces the model with TorchDynamo and runs the captured graphs as they
    # are: what this checks is that every method's forward compiles, not inductor's kernels.
    plain = train_fewshot(small_config(steps=2), tmp_path / "plain", progress=False, source=synthetic_source)
    compiled = train_fewshot(small_config(steps=2, compile="eager"), tmp_path / "compiled", progress=False,
                             source=synthetic_source)
    assert read_log(tmp_path / "compiled")["loss"].tolist() == pytest.approx(read_log(tmp_path / "plain")["loss"].tolist(),
                                                                              rel=1e-5)
    for (name, a), b in zip(plain.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_finished_run_loads_without_building_its_dataset(synthetic_source, tmp_path, monkeypatch):
    import fsslib.engine.episodic as episodic

    config = small_config(steps=2)
    trained = train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    monkeypatch.setattr(episodic, "fewshot_dataset", lambda *a, **k: pytest.fail("dataset built for a finished run"))
    loaded = train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_warm_up_ramps_the_schedule_linearly():
    config = TrainConfig(steps=10, schedule="constant", warmup_steps=4)
    assert [learning_rate_factor(config, s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    cosine = TrainConfig(steps=10, schedule="cosine", warmup_steps=4)
    assert learning_rate_factor(cosine, 1) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)


class _ItemsOn(torch.utils.data.Dataset):
    """Items whose tensors live on a given device (a cached-feature dataset on a GPU yields such items)."""

    def __init__(self, device):
        self.device = device

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"query_feats": {"layer3": torch.zeros(2, device=self.device)}, "names": ["a"],
                "query_mask": torch.zeros(2, dtype=torch.long)}


def test_batches_are_pinned_only_for_a_gpu_and_cpu_items():
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert pin_memory_for(_ItemsOn("cpu"), 0, cuda)
    assert not pin_memory_for(_ItemsOn("cpu"), 0, torch.device("cpu"))
    # Items already on another device cannot be pinned ("only dense CPU tensors can be pinned").
    assert not pin_memory_for(_ItemsOn("meta"), 0, cuda)


def test_rng_states_restore_from_tensors_mapped_to_any_device(monkeypatch):
    """A checkpoint loaded onto a GPU carries its RNG byte tensors there; restoring must bring them
    back to the CPU (``torch.set_rng_state`` takes CPU byte tensors only)."""
    states = _rng_states()
    expected = torch.rand(3)
    moved = []

    class Elsewhere(torch.Tensor):  # a tensor that reports another device until moved to the CPU
        def cpu(self, *args, **kwargs):
            moved.append(True)
            return torch.Tensor.cpu(self.as_subclass(torch.Tensor), *args, **kwargs)

    torch.manual_seed(123)
    _set_rng_states({**states, "torch": states["torch"].as_subclass(Elsewhere), "cuda": []})
    assert moved and torch.equal(torch.rand(3), expected)


def test_a_checkpoint_from_a_gpu_machine_resumes_on_the_cpu(synthetic_source, tmp_path, monkeypatch):
    """CUDA generator states in a checkpoint are skipped on a machine without CUDA (and set only
    for the devices it has); the checkpoint is read on the CPU whatever the run's device."""
    config = small_config(steps=4)
    straight = train_fewshot(config, tmp_path / "straight", progress=False, source=synthetic_source)
    train_fewshot(config, tmp_path / "resumed", progress=False, stop_after=2, source=synthetic_source)
    path = tmp_path / "resumed" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2  # as saved on a two-GPU machine
    torch.save(state, path)
    mapped_to = {}
    load = torch.load

    def recording_load(file, *args, **kwargs):
        mapped_to[Path(file).name] = kwargs.get("map_location")
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = train_fewshot(config, tmp_path / "resumed", progress=False, source=synthetic_source)
    assert mapped_to["checkpoint.pt"] == "cpu"
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cached_run_trains_and_resumes_on_cuda(synthetic_source, tmp_path):
    config = small_config(model="pfenet", steps=4, cache_features=True, augment=False, device="cuda",
                          model_args={"width": 16, "frozen_stages": "all"})
    straight = train_fewshot(config, tmp_path / "straight", progress=False, source=synthetic_source)
    train_fewshot(config, tmp_path / "resumed", progress=False, stop_after=2, source=synthetic_source)
    resumed = train_fewshot(config, tmp_path / "resumed", progress=False, source=synthetic_source)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a, b)


def test_run_lock_names_the_owner_or_waits_for_it(tmp_path, capsys):
    import subprocess
    import sys
    import threading
    import time as clock

    from fsslib.engine.trainer import RunInUse, RunLock

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    # Reap it when it exits: a child that has exited but not been waited for still answers kill(pid, 0).
    threading.Thread(target=owner.wait, daemon=True).start()
    try:
        (tmp_path / "lock").write_text(str(owner.pid))
        with pytest.raises(RunInUse, match=f"being trained by process {owner.pid}"):
            RunLock(tmp_path).__enter__()
        start = clock.perf_counter()
        with RunLock(tmp_path, wait="the backbone is being pre-trained elsewhere", poll_seconds=0.05):
            assert owner.poll() is not None, "the lock was taken while its owner was alive"
            assert (tmp_path / "lock").read_text() == str(os.getpid())
        assert clock.perf_counter() - start > 0.5
        out = capsys.readouterr().out
        assert out.count("waiting for it to finish") == 1 and "pre-trained elsewhere" in out
    finally:
        owner.kill()
        owner.wait()
    assert not (tmp_path / "lock").exists()


def test_default_run_dir_keeps_fast_mode_apart_and_ignores_the_device(monkeypatch):
    from dataclasses import replace

    from fsslib.engine.episodic import default_run_dir
    from fsslib.engine.trainer import TrainConfig

    config = TrainConfig(model="protonet", steps=1000)
    assert default_run_dir(config) == default_run_dir(replace(config, device="cuda", num_workers=4))
    assert default_run_dir(config) != default_run_dir(replace(config, steps=6))
    assert default_run_dir(config).name.startswith("protonet-synthetic-fold0-seed0-")
