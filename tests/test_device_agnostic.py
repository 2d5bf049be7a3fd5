"""Nothing assumes that a tensor lives on the CPU: models, features and outputs may be on a GPU.

Without a GPU, :class:`OnDevice` stands in for a GPU tensor: a CPU tensor that, like a CUDA one,
cannot become a numpy array (``.numpy()``, ``np.asarray``, matplotlib) until it is moved with
``.cpu()`` or ``.to("cpu")``, and whose ops all return ``OnDevice`` tensors. It checks the
numpy boundary only, not device mismatches between tensors: the tests marked ``cuda`` run the
real paths on a GPU machine.
"""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from fsslib.analysis import collect_prototypes, object_map, sample_pixels
from fsslib.analysis.plotting import episode_grid, overlay
from fsslib.data import EpisodeDataset, EpisodePool, collate_episodes, eval_transform, sample_episodes
from fsslib.data.sources import LABEL_IGNORE
from fsslib.engine import Evaluator, episode_iou
from fsslib.engine.feature_cache import CachedEpisodeDataset, FeatureCache, cache_key
from fsslib.engine.protocol import EvalProtocol, evaluate
from fsslib.engine.statistics import per_seed
from fsslib.models import build_model

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class OnDevice(torch.Tensor):
    """A CPU tensor that refuses numpy conversion until moved to the CPU, as a CUDA tensor does."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("numpy", "__array__"):
            raise TypeError(f"can't convert an OnDevice tensor to numpy ({name}); use Tensor.cpu() first")
        result = super().__torch_function__(func, types, args, kwargs)
        targets = (*args[1:], kwargs.get("device"))
        if name == "cpu" or (name == "to" and any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu"
                                                   for t in targets)):
            return result.as_subclass(torch.Tensor)
        return result


def on_device(value):
    """``value`` (a tensor, or a dict of them) as :class:`OnDevice` tensors."""
    if isinstance(value, dict):
        return {k: on_device(v) for k, v in value.items()}
    return value.as_subclass(OnDevice) if isinstance(value, torch.Tensor) else value


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture
def exact_cuda():
    """No TF32 convolutions (matrix products have none by default), so CPU and CUDA results agree
    to float rounding."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


def _labels() -> torch.Tensor:
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 2:9, 3:10] = 3
    labels[0, 12:15, 12:15] = 3  # a second object of class 3
    labels[1, 8:14, 1:6] = 3
    labels[1, 0:3, 10:16] = 7
    labels[0, 15, 0] = LABEL_IGNORE
    return labels


def _frozen_pfenet():
    torch.manual_seed(0)
    return build_model("pfenet", backbone="smallcnn", width=16, frozen_stages="all", freeze_bn=True).eval()


def _one_item(source, shot=2, size=64):
    pool = EpisodePool.for_fold(source, 0, "val")
    episodes = sample_episodes(pool, 1, shot=shot, seed=0)
    return EpisodeDataset(pool, eval_transform(size), shot=shot, episodes=episodes)[0]


# ---------------------------------------------------------------------- the stand-in
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # numpy retries as for CUDA
def test_the_stand_in_refuses_numpy_like_a_gpu_tensor():
    x = (on_device(torch.arange(6.0).reshape(2, 3)) * 2).permute(1, 0).detach()
    assert isinstance(x, OnDevice) and isinstance(x.to(torch.float64), OnDevice)
    for convert in (lambda t: t.numpy(), np.asarray, lambda t: plt.imshow(t)):
        with pytest.raises(TypeError, match="cpu"):
            convert(x)
    for moved in (x.cpu(), x.to("cpu"), x.to(torch.device("cpu"))):
        assert type(moved) is torch.Tensor
        np.testing.assert_array_equal(moved.numpy(), [[0, 6], [2, 8], [4, 10]])
    assert x.tolist() == [[0, 6], [2, 8], [4, 10]] and x.sum().item() == 30  # allowed on a GPU too
    plt.close("all")


# ---------------------------------------------------------------------- analysis
def test_pixel_sampling_takes_features_and_labels_on_the_device():
    features, labels = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0)), _labels()
    expected = sample_pixels(features, labels, pixels_per_region=3, seed=1)
    got = sample_pixels(on_device(features), on_device(labels), pixels_per_region=3, seed=1)
    assert got.n_objects == 4
    for field in dataclasses.fields(expected):
        np.testing.assert_array_equal(getattr(got, field.name), getattr(expected, field.name), err_msg=field.name)
    regions, classes = object_map(on_device(labels[1]))
    assert classes == [3, 7] and isinstance(regions, np.ndarray)
    np.testing.assert_array_equal(regions, object_map(labels[1].numpy())[0])


def test_overlays_and_episode_grids_take_tensors_on_the_device(synthetic_source):
    item = _one_item(synthetic_source)
    expected = overlay(item["query_img"], item["query_mask"])
    moved = on_device(item)
    np.testing.assert_array_equal(overlay(moved["query_img"], moved["query_mask"]), expected)
    fig = episode_grid([moved])
    try:
        assert len(fig.axes) == 1 + moved["support_imgs"].shape[0]
    finally:
        plt.close(fig)


def test_collected_prototypes_come_off_the_device(synthetic_source, monkeypatch):
    """Features cached on the device (and so the head's outputs) reach the numpy prototypes."""
    torch.manual_seed(0)
    model = build_model("ssp", feature_stage="layer3").eval()
    args = dict(episodes=3, seed=2, batch_size=2, image_size=64, device="cpu")
    expected = collect_prototypes(model, synthetic_source, 0, **args)
    gather = FeatureCache.gather
    monkeypatch.setattr(FeatureCache, "gather", lambda self, stems: on_device(gather(self, stems)))
    got = collect_prototypes(model, synthetic_source, 0, **args)
    assert {"support", "query_gt", "query_pred", "self_support"} <= set(got.meta["role"])
    assert type(got.vectors) is np.ndarray
    np.testing.assert_array_equal(got.vectors, expected.vectors)
    pd.testing.assert_frame_equal(got.meta, expected.meta)


# ---------------------------------------------------------------------- engine
def test_the_evaluator_takes_labels_and_classes_on_the_device():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (4, 8, 8), generator=generator)
    target = torch.randint(0, 3, (4, 8, 8), generator=generator)
    target[:, 0] = 255
    class_id = torch.tensor([[1, 2], [3, 4], [2, 1], [4, 3]])
    plain, moved = Evaluator([1, 2, 3, 4]), Evaluator([1, 2, 3, 4])
    plain.update(pred, target, class_id)
    moved.update(on_device(pred), target, on_device(class_id))  # prediction on the device, labels as loaded
    moved.update(on_device(pred), on_device(target), on_device(class_id).tolist())
    plain.update(pred, target, class_id)
    assert moved.rows() == plain.rows() and moved.fb_rows() == plain.fb_rows()
    assert moved.miou() == plain.miou() > 0 and moved.episode_counts() == {c: 4 for c in (1, 2, 3, 4)}
    pred, target = (pred == 1).long(), torch.where(target == 255, 255, (target == 1).long())
    np.testing.assert_array_equal(episode_iou(on_device(pred), on_device(target)).cpu().numpy(),
                                  episode_iou(pred, target).numpy())


def test_the_feature_cache_spills_and_keys_features_of_the_device(synthetic_source, monkeypatch):
    model = _frozen_pfenet()
    stems = sorted(synthetic_source.stems("val"))[:4]
    key = cache_key(model, stems, 64)
    plain = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), batch_size=3)
    extract, state_dict = model.extract, model.backbone.state_dict
    monkeypatch.setattr(model, "extract", lambda images: on_device(extract(images)))
    monkeypatch.setattr(model.backbone, "state_dict", lambda: on_device(dict(state_dict())))
    assert cache_key(model, stems, 64) == key  # one store for the weights, whatever device computed them
    spilled = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), batch_size=3, memory_budget=0)
    assert spilled.location is not None
    got, expected = spilled.gather([stems[2], stems[0]]), plain.gather([stems[2], stems[0]])
    assert expected and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("labels", ["original", "resized"])  # logits resized per episode, or one batch
def test_evaluation_takes_features_cached_on_the_device(synthetic_source, monkeypatch, labels):
    torch.manual_seed(0)
    model = build_model("protonet", feature_stage="layer3").eval()
    protocol = EvalProtocol(episodes=6, seeds=(0,), image_size=64, batch_size=4, labels=labels)
    expected = evaluate(model, synthetic_source, 0, protocol, device="cpu")
    gather = FeatureCache.gather
    monkeypatch.setattr(FeatureCache, "gather", lambda self, stems: on_device(gather(self, stems)))
    got = evaluate(model, synthetic_source, 0, protocol, device="cpu")
    assert expected["union"].sum() > 0
    pd.testing.assert_frame_equal(got, expected)


# ---------------------------------------------------------------------- notebooks
TRAINED = {"train_variant", "train_fewshot", "selection_model"}


def unplaced_trained_models(source: str) -> list[str]:
    """Models returned by training, on the training device (a GPU if any), that the code keeps or
    runs without placing them first (``.cpu()``, ``.to(device)``). Handing one to a function that
    places it (``collect_prototypes``, ``evaluate``) is fine."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in TRAINED:
            parent = parents.get(node)
            used = isinstance(parent, ast.Attribute) and parent.attr not in ("cpu", "to")
            if used or isinstance(parent, ast.Assign):
                found.append(ast.unparse(node))
    return found


def test_notebooks_place_trained_models_before_feeding_them_cpu_batches():
    assert unplaced_trained_models("model = train_variant(v, 0, 0).eval()\nmodel(batch)") == ["train_variant(v, 0, 0)"]
    assert unplaced_trained_models("m = selection_model(s, 0)") == ["selection_model(s, 0)"]
    assert not unplaced_trained_models("m = train_fewshot(c).to(device).eval()\nd = f(train_variant(v, 0, 0), x)")
    assert NOTEBOOKS
    problems = {}
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code" and (found := unplaced_trained_models("".join(cell["source"]))):
                problems[f"{path.name} cell {i}"] = found
    assert not problems, f"move these models with .cpu() or .to(device) before use: {problems}"


# ---------------------------------------------------------------------- the real paths, on a GPU
@cuda
def test_cuda_tensors_reach_numpy_and_the_evaluator(synthetic_source):
    features, labels = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(0)), _labels()
    expected = sample_pixels(features, labels, pixels_per_region=3, seed=1)
    got = sample_pixels(features.cuda(), labels.cuda(), pixels_per_region=3, seed=1)
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-6)
    np.testing.assert_array_equal(got.object_cells, expected.object_cells)
    np.testing.assert_array_equal(object_map(labels[0].cuda())[0], object_map(labels[0])[0])
    item = _one_item(synthetic_source)
    np.testing.assert_allclose(overlay(item["query_img"].cuda(), item["query_mask"].cuda()),
                               overlay(item["query_img"], item["query_mask"]), atol=1e-6)
    pred = torch.randint(0, 2, (3, 8, 8), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 2, (3, 8, 8), generator=torch.Generator().manual_seed(2))
    plain, moved = Evaluator([5, 6]), Evaluator([5, 6])
    plain.update(pred, target, torch.tensor([5, 6, 5]))
    moved.update(pred.cuda(), target, torch.tensor([5, 6, 5]).cuda())
    assert moved.rows() == plain.rows() and moved.fb_rows() == plain.fb_rows()


@cuda
def test_cuda_feature_caches_match_the_cpu_one(synthetic_source, exact_cuda):
    model = _frozen_pfenet()
    stems = sorted(synthetic_source.stems("val"))[:4]
    key = cache_key(model, stems, 64)
    reference = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), batch_size=3).gather(stems)
    model = model.cuda()
    assert cache_key(model, stems, 64) == key
    device = torch.device("cuda")
    in_memory = FeatureCache(model, synthetic_source, stems, 64, device, batch_size=3)
    spilled = FeatureCache(model, synthetic_source, stems, 64, device, batch_size=3, memory_budget=0)
    assert all(v.is_cuda for v in in_memory.features.values())
    assert all(not v.is_cuda for v in spilled.features.values())  # memory-mapped on the CPU
    for cache in (in_memory, spilled):
        got = cache.gather(stems)
        for k, v in reference.items():
            assert got[k].is_cuda
            torch.testing.assert_close(got[k].cpu(), v, atol=1e-4, rtol=1e-4)
    pool = EpisodePool.for_fold(synthetic_source, 0, "val")
    pool_stems = {s for stems in (*pool.queries.values(), *pool.supports.values()) for s in stems}
    item = CachedEpisodeDataset(pool, FeatureCache(model, synthetic_source, pool_stems, 64, device), length=1)[0]
    assert all(v.is_cuda for v in item["query_feats"].values()) and not item["support_masks"].is_cuda


@cuda
def test_cuda_evaluation_and_prototypes_match_the_cpu(synthetic_source, exact_cuda):
    torch.manual_seed(0)
    cpu_model = build_model("protonet", feature_stage="layer3").eval()
    cuda_model = build_model("protonet", feature_stage="layer3").eval()
    cuda_model.load_state_dict(cpu_model.state_dict())
    protocol = EvalProtocol(episodes=8, seeds=(0,), image_size=64, batch_size=3)
    on_cpu = per_seed(evaluate(cpu_model, synthetic_source, 0, protocol, device="cpu"))
    on_gpu = per_seed(evaluate(cuda_model, synthetic_source, 0, protocol, device="cuda"))
    assert next(cuda_model.parameters()).is_cuda
    assert on_gpu["miou"].iloc[0] == pytest.approx(on_cpu["miou"].iloc[0], abs=0.5)
    args = dict(episodes=4, seed=1, image_size=64, predictions=False, drop_empty=False)
    expected = collect_prototypes(cpu_model, synthetic_source, 0, device="cpu", **args)
    got = collect_prototypes(cuda_model, synthetic_source, 0, device="cuda", **args)
    pd.testing.assert_frame_equal(got.meta, expected.meta)
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-4, rtol=1e-4)


@cuda
def test_a_trained_model_comes_back_on_the_gpu_and_runs_cpu_batches_once_moved(synthetic_source, tmp_path):
    """Why the notebooks move trained models: training returns them on its device."""
    from fsslib.engine.episodic import train_fewshot
    from fsslib.engine.trainer import TrainConfig

    config = TrainConfig(model="protonet", steps=2, batch_size=2, checkpoint_every=2, log_every=1, image_size=64,
                         model_args={"feature_stage": "layer3"})
    model = train_fewshot(config, tmp_path / "run", progress=False, source=synthetic_source)
    assert next(model.parameters()).is_cuda
    batch = collate_episodes([_one_item(synthetic_source, shot=1)])
    model = model.cpu().eval()
    with torch.no_grad():
        prediction = model.predict(model(batch))
    assert prediction.shape == batch["query_mask"].shape and not prediction.is_cuda
