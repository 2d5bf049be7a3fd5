"""The frozen-feature cache: in memory, spilled to memory-mapped files, and a persistent store."""
import numpy as np
import torch

from fsslib.engine.feature_cache import FeatureCache, backbone_frozen, cache_key
from fsslib.models import build_model


def _model(**args):
    torch.manual_seed(0)
    return build_model("pfenet", backbone="smallcnn", width=16, frozen_stages="all", freeze_bn=True, **args).eval()


def _stems(source, n=6):
    return sorted(source.stems("val"))[:n]


def test_spilled_and_stored_features_equal_the_in_memory_ones(synthetic_source, tmp_path):
    model, stems = _model(), _stems(synthetic_source)
    in_memory = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), batch_size=4)
    assert in_memory.location is None
    spilled = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), batch_size=4, memory_budget=0)
    layer4 = spilled.location / "layer4.npy"  # the features live in this file, mapped, not in RAM
    assert layer4.exists() and np.load(layer4, mmap_mode="r").shape == tuple(spilled.features["layer4"].shape)
    store = tmp_path / "store"
    stored = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), batch_size=4, store=store)
    assert (store / cache_key(model, sorted(set(stems)), 64) / "complete").exists()
    reloaded = FeatureCache(model, synthetic_source, stems, 64, torch.device("cpu"), store=store)
    assert reloaded.location == stored.location
    query = [stems[1], stems[3]]
    expected = in_memory.gather(query)
    for cache in (spilled, stored, reloaded):
        got = cache.gather(query)
        assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)


def test_the_store_key_changes_with_the_weights_the_size_and_the_images(synthetic_source):
    model, stems = _model(), _stems(synthetic_source)
    key = cache_key(model, stems, 64)
    assert cache_key(model, stems, 96) != key and cache_key(model, stems[:-1], 64) != key
    other = _model()
    with torch.no_grad():
        next(other.backbone.parameters()).add_(1e-3)
    assert cache_key(other, stems, 64) != key


def test_only_a_backbone_frozen_entirely_counts_as_frozen():
    assert backbone_frozen(_model())
    assert not backbone_frozen(build_model("pfenet", backbone="smallcnn", width=16, frozen_stages=("layer1",), freeze_bn=True))
    assert not backbone_frozen(build_model("pfenet", backbone="smallcnn", width=16, frozen_stages="all", freeze_bn=False))


def test_cached_support_masks_code_n_way_supports_like_the_episode_dataset(synthetic_source):
    from fsslib.data import EXCLUDED, EpisodeDataset, EpisodePool, eval_transform, sample_episodes

    pool = EpisodePool.for_fold(synthetic_source, 0, "val")
    held = {(p.stem, p.class_id) for p in synthetic_source.index("val")}
    # episodes whose supports also show the other way's class (hard negatives), so the check below bites
    episodes = [e for e in sample_episodes(pool, 300, shot=1, way=2, seed=0)
                if any((s, c) in held for s, c in zip(e.supports, reversed(e.classes)))][:4]
    assert episodes
    stems = {s for e in episodes for s in (e.query, *e.supports)}
    cache = FeatureCache(_model(), synthetic_source, stems, 128, torch.device("cpu"))
    dataset = EpisodeDataset(pool, eval_transform(128), shot=1, way=2, episodes=episodes)
    cached = torch.stack([cache.support_masks(e) for e in episodes])
    assert torch.equal(cached, torch.stack([dataset[i]["support_masks"] for i in range(len(episodes))]))
    assert (cached == EXCLUDED).any()  # other ways' pixels are EXCLUDED there too, not void
