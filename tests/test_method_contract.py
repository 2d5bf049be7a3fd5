"""The contract every method keeps (DESIGN.md, "Models"), checked once for all of them.

Evaluation and head-only training call ``head`` on features computed once per image, so
``head`` on those features must give exactly what ``forward`` gives, for any shot count; the
output has one channel per way plus background; binary-only methods refuse N-way clearly.
"""
import pytest
import torch

from fsslib.models import METHODS, build_model

SMALL = {"pfenet": {"width": 16}, "mspf": {"width": 16}, "msdnet": {}}
BINARY_ONLY = {"ssp", "pfenet", "mspf", "msdnet"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(k: int, way: int = 1, size: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(2, way * k, size, size, dtype=torch.long)
    masks[..., size // 4: 3 * size // 4, size // 8: size // 2] = 1
    masks[:, -1, size // 2:, size // 2:] = 1  # shots differ
    masks[..., :3, :] = 255
    return {"query_img": torch.randn(2, 3, size, size, generator=g),
            "support_imgs": torch.randn(2, way * k, 3, size, size, generator=g), "support_masks": masks,
            "support_classes": torch.arange(1, way + 1).repeat(2, 1)}


def model(name: str):
    torch.manual_seed(0)
    return build_model(name, **SMALL.get(name, {})).eval()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_head_on_cached_features_equals_forward_for_k_shot(name):
    net = model(name)
    with torch.no_grad():
        for k in (1, 3):
            b = batch(k, seed=k)
            query, support = net.episode_features(b)
            from_cache = net.head(query, support, b["support_masks"], 1, (64, 64))["logits"]
            torch.testing.assert_close(from_cache, net(b)["logits"])
            assert from_cache.shape == (2, 2, 64, 64)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_n_way_gives_one_channel_per_way_or_a_clear_error(name):
    net, b = model(name), batch(k=1, way=2)
    with torch.no_grad():
        if name in BINARY_ONLY:
            with pytest.raises(ValueError, match="1-way|way=1"):
                net(b)
        else:
            assert net(b)["logits"].shape == (2, 3, 64, 64)
