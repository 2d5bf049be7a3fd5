"""Prototype collection, t-SNE and silhouette, pixel-similarity statistics (fsslib.analysis)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fsslib.analysis import (
    PrototypeSet,
    class_similarity_matrix,
    collect_prototypes,
    object_map,
    pixel_similarity_pairs,
    prototype_distances,
    prototype_similarity_pairs,
    sample_pixels,
    silhouette_by_class,
    similarity_table,
    tsne,
)
from fsslib.data import EpisodeDataset, collate_episodes, eval_transform, sample_episodes
from fsslib.data.sources import LABEL_IGNORE
from fsslib.models import build_model, masked_average_pooling


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- objects
def test_object_map_finds_connected_components_per_class():
    label = np.zeros((6, 8), dtype=np.int64)
    label[0:2, 0:2] = 3          # object 1 of class 3
    label[4:6, 5:8] = 3          # object 2 of class 3 (not touching)
    label[2, 2] = 3              # touches the first one at a corner: same object (8-connectivity)
    label[0:3, 5:7] = 7          # one object of class 7
    label[5, 0] = LABEL_IGNORE
    regions, classes = object_map(label)
    assert classes == [3, 3, 7]
    assert set(regions[0:2, 0:2].ravel()) == {0} and regions[2, 2] == 0
    assert set(regions[4:6, 5:8].ravel()) == {1}
    assert set(regions[0:3, 5:7].ravel()) == {2}
    assert regions[5, 0] == -2 and regions[3, 0] == -1  # ignore: neither; label 0: background
    regions, classes = object_map(label, classes=[7])
    assert classes == [7] and (regions[0:2, 0:2] == -2).all()  # class 3 is in neither now


# ---------------------------------------------------------------------- a constructed case
def unit(*axes, dim=6):
    v = torch.zeros(dim)
    for a in axes:
        v[a] = 1.0
    return v / v.norm()


@pytest.fixture(scope="module")
def constructed():
    """Two 8x8 images, features at label resolution, with known vectors.

    Image 0: object A of class 1 (4 cells: two e0, two e1); background (e0 + e2)/sqrt2 (58 cells); an
    ignored cell and a class-2 cell, both e5 (must never be sampled with classes=[1]).
    Image 1: object B of class 1 (4 cells, all e0); background half e2, half e3 (30 + 30 cells).
    """
    features = torch.zeros(2, 6, 8, 8)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    features[0] = unit(0, 2)[:, None, None]
    labels[0, 0, 0:4] = 1
    features[0, :, 0, 0:2] = unit(0)[:, None]
    features[0, :, 0, 2:4] = unit(1)[:, None]
    labels[0, 7, 7], features[0, :, 7, 7] = LABEL_IGNORE, unit(5)
    labels[0, 7, 6], features[0, :, 7, 6] = 2, unit(5)
    labels[1, 3, 2:6] = 1
    features[1, :, 3, 2:6] = unit(0)[:, None]
    background = (labels[1] == 0).flatten().nonzero().squeeze(1)
    flat = features[1].flatten(1)
    flat[:, background[:30]] = unit(2)[:, None]
    flat[:, background[30:]] = unit(3)[:, None]
    features[1] = flat.view(6, 8, 8)
    return features, labels


def test_sample_pixels_keeps_the_regions_and_their_means(constructed):
    features, labels = constructed
    sample = sample_pixels(features, labels, classes=[1], pixels_per_region=64)
    assert sample.object_class.tolist() == [1, 1] and sample.object_image.tolist() == [0, 1]
    assert sample.object_cells.tolist() == [4, 4] and sample.background_cells.tolist() == [58, 60]
    assert len(sample.vectors) == 4 + 4 + 58 + 60  # the ignored and the class-2 cell are left out
    assert not np.isclose(sample.vectors @ unit(5).numpy(), 1).any()
    np.testing.assert_allclose(sample.object_prototypes[0], (0.5 * (unit(0) + unit(1))).numpy(), atol=1e-6)
    np.testing.assert_allclose(sample.background_prototypes[0], unit(0, 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(sample.vectors, axis=1), 1, atol=1e-6)
    capped = sample_pixels(features, labels, classes=[1], pixels_per_region=3)
    assert np.bincount(capped.pixel_object[capped.pixel_object >= 0]).tolist() == [3, 3]
    assert np.bincount(capped.pixel_image[capped.pixel_object < 0]).tolist() == [3, 3]
    with_class_2 = sample_pixels(features, labels, pixels_per_region=64)
    assert with_class_2.object_class.tolist() == [1, 2, 1]


def test_pixel_statistics_on_known_vectors(constructed):
    features, labels = constructed
    sample = sample_pixels(features, labels, classes=[1], seed=1)
    table = pixel_similarity_pairs(sample, pairs=40000, seed=2).groupby("statistic")["similarity"].mean()
    r = 1 / math.sqrt(2)
    expected = {
        # A: a distinct pair of its 4 cells shares the vector with probability 1/3; B: always.
        "within_object": (1 / 3 + 1) / 2,
        # a pixel of A (e0 or e1) vs a pixel of B (e0).
        "between_objects": 0.5,
        # A's pixels vs its background (e0+e2)/sqrt2: r or 0; B's e0 vs e2/e3: 0.
        "fg_vs_bg": (0.5 * r + 0) / 2,
        # image 0: one vector; image 1: 30 e2 + 30 e3, a distinct pair matches w.p. 29/59.
        "bg_within_image": (1 + 29 / 59) / 2,
        # (e0+e2)/sqrt2 vs e2 or e3.
        "bg_across_images": 0.5 * r,
    }
    for statistic, value in expected.items():
        assert table[statistic] == pytest.approx(value, abs=0.01), statistic


def test_prototype_statistics_on_known_vectors(constructed):
    features, labels = constructed
    sample = sample_pixels(features, labels, classes=[1])
    table = prototype_similarity_pairs(sample, pairs=40000, seed=0).groupby("statistic")["similarity"].mean()
    r = 1 / math.sqrt(2)
    assert table["own_object"] == pytest.approx((r + 1) / 2, abs=0.01)        # A: cos(e0, (e0+e1)/sqrt2); B: 1
    assert table["other_object"] == pytest.approx((0.5 + r) / 2, abs=0.01)    # A's pixel vs e0; B's e0 vs A's mean
    assert table["bg_vs_other_object"] == pytest.approx(r / 2, abs=0.01)      # bg of 0 vs e0: r; bg of 1 vs A: 0
    matrix = class_similarity_matrix(sample.object_prototypes, sample.object_class, sample.object_image)
    assert matrix.loc[1, 1] == pytest.approx(r)


def test_statistics_agree_with_all_pairs_when_nothing_is_sampled_away():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 6, 6)
    labels = torch.zeros(3, 6, 6, dtype=torch.long)
    labels[:, 1:4, 1:4] = 4
    sample = sample_pixels(features, labels, pixels_per_region=100)
    pairs = pixel_similarity_pairs(sample, pairs=60000, seed=0)
    f = torch.nn.functional.normalize(features.flatten(2), dim=1)  # [3, 5, 36]
    obj, bg = (labels.flatten(1) == 4), (labels.flatten(1) == 0)
    within = np.mean([(f[n][:, obj[n]].T @ f[n][:, obj[n]]).fill_diagonal_(float("nan")).nanmean().item()
                      for n in range(3)])
    across = np.mean([(f[a][:, bg[a]].T @ f[b][:, bg[b]]).mean().item() for a in range(3) for b in range(3) if a != b])
    means = pairs.groupby("statistic")["similarity"].mean()
    assert means["within_object"] == pytest.approx(within, abs=0.01)
    assert means["bg_across_images"] == pytest.approx(across, abs=0.01)
    table = similarity_table(pairs)
    assert list(table.index)[0] == "within one object" and (table["pairs"] == 60000).all()
    assert similarity_table(pairs, per_class=True).columns.tolist() == [4]


def test_sample_pixels_at_a_coarser_feature_grid():
    torch.manual_seed(0)
    features = torch.randn(1, 3, 4, 4)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 0:8, 0:8] = 2  # the top-left 2x2 feature cells
    sample = sample_pixels(features, labels)
    assert sample.object_cells.tolist() == [4] and sample.background_cells.tolist() == [12]
    np.testing.assert_allclose(sample.object_prototypes[0], features[0, :, :2, :2].mean(dim=(1, 2)).numpy(), atol=1e-6)


def test_class_similarity_matrix_against_a_loop():
    rng = np.random.default_rng(0)
    vectors, classes, groups = rng.normal(size=(9, 4)), np.array([1, 1, 1, 2, 2, 3, 3, 3, 3]), rng.integers(0, 3, 9)
    matrix = class_similarity_matrix(vectors, classes, groups)
    unit_vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            sims = [unit_vectors[i] @ unit_vectors[j] for i in range(9) for j in range(9)
                    if classes[i] == a and classes[j] == b and i != j and groups[i] != groups[j]]
            if sims:
                assert matrix.loc[a, b] == pytest.approx(np.mean(sims))
            else:
                assert np.isnan(matrix.loc[a, b])


# ---------------------------------------------------------------------- embedding
def clusters(n=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 5
    return np.concatenate([c + rng.normal(size=(n, 16)) for c in centres]), np.repeat([1, 2, 3], n)


def test_tsne_shape_and_determinism():
    x, _ = clusters()
    for init in ("pca", "random"):
        a, b = tsne(x, perplexity=10, seed=3, init=init), tsne(x, perplexity=10, seed=3, init=init)
        assert a.shape == (90, 2)
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, tsne(x, perplexity=10, seed=4, init="random"))
    with pytest.raises(ValueError, match="perplexity"):
        tsne(x[:5], perplexity=10)


def test_silhouette_by_class():
    from sklearn.metrics import silhouette_score

    x, labels = clusters()
    table = silhouette_by_class(x, labels, metric="euclidean")
    assert list(table.index) == [1, 2, 3, "all"] and table.loc["all", "n"] == 90
    assert table.loc["all", "silhouette"] == pytest.approx(silhouette_score(x, labels, metric="euclidean"))
    assert (table["silhouette"] > 0.5).all()  # well separated clusters


def test_prototype_distances_pair_by_episode():
    meta = pd.DataFrame({"label": "m", "episode": [0, 0, 1, 1, 2], "class": [5, 5, 6, 6, 7], "classes": "novel",
                         "role": ["support", "query_gt", "query_gt", "support", "support"], "region": "fg", "area": 1})
    vectors = np.array([[3, 0], [0, 4], [1, 1], [2, 2], [9, 9]], dtype=np.float32)
    d = prototype_distances(PrototypeSet(vectors, meta))
    assert d["episode"].tolist() == [0, 1]  # episode 2 has no query prototype
    np.testing.assert_allclose(d["euclidean"], [5.0, math.sqrt(2)])
    np.testing.assert_allclose(d["cosine_distance"], [1.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------------- collection
def test_collected_prototypes_are_the_models_own(synthetic_source):
    torch.manual_seed(0)
    model = build_model("ssp", feature_stage="layer3").eval()
    prototypes = collect_prototypes(model, synthetic_source, 0, episodes=4, shot=2, seed=1, batch_size=3,
                                    drop_empty=False, device="cpu")
    assert len(prototypes) == 4 * 8 and set(prototypes.meta["classes"]) == {"novel"}
    from fsslib.analysis.collect import episode_pool

    pool = episode_pool(synthetic_source, 0, "novel")
    episodes = sample_episodes(pool, 4, 2, seed=1)
    dataset = EpisodeDataset(pool, eval_transform(128), shot=2, episodes=episodes)
    batch = collate_episodes([dataset[i] for i in range(4)])
    with torch.no_grad():
        output = model(batch)
    support_classes = prototypes.meta.query("role == 'support'")["class"].tolist()
    assert support_classes == [e.classes[0] for e in episodes for _ in ("fg", "bg")]
    torch.testing.assert_close(torch.from_numpy(prototypes.select(role="support", region="fg").vectors),
                               output["prototypes"][:, 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(prototypes.select(role="self_support", region="fg").vectors),
                               output["ssfp"], rtol=1e-4, atol=1e-5)
    gt = masked_average_pooling(output["query_features"], (batch["query_mask"] == 1).float(), "resize_mask", 1e-5)
    torch.testing.assert_close(torch.from_numpy(prototypes.select(role="query_gt", region="fg").vectors), gt,
                               rtol=1e-4, atol=1e-5)
    pred = masked_average_pooling(output["query_features"], (model.predict(output) == 1).float(), "resize_mask", 1e-5)
    torch.testing.assert_close(torch.from_numpy(prototypes.select(role="query_pred", region="fg").vectors), pred,
                               rtol=1e-4, atol=1e-5)
    base = collect_prototypes(model, synthetic_source, 0, episodes=3, classes="base", predictions=False, device="cpu")
    assert set(base.meta["role"]) == {"support", "query_gt"} and set(base.meta["classes"]) == {"base"}
    from fsslib.data import fold_classes

    assert not set(base.meta["class"]) & set(fold_classes("synthetic", 0))


@pytest.mark.parametrize("background", ["not_foreground", "labelled"])
def test_collected_background_prototypes_follow_the_models_background_rule(synthetic_source, background):
    torch.manual_seed(0)
    model = build_model("protonet", feature_stage="layer3", background=background).eval()
    prototypes = collect_prototypes(model, synthetic_source, 0, episodes=3, shot=1, seed=2, drop_empty=False,
                                    predictions=False, device="cpu")
    from fsslib.analysis.collect import episode_pool

    pool = episode_pool(synthetic_source, 0, "novel")
    dataset = EpisodeDataset(pool, eval_transform(128), episodes=sample_episodes(pool, 3, 1, seed=2))
    batch = collate_episodes([dataset[i] for i in range(3)])
    assert (batch["support_masks"] == 255).any()  # void pixels, where the two rules differ
    with torch.no_grad():
        output = model(batch)
    torch.testing.assert_close(torch.from_numpy(prototypes.select(role="support", region="bg").vectors),
                               output["prototypes"][:, 0], rtol=1e-4, atol=1e-5)
