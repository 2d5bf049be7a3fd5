"""The contract every method keeps (DESIGN.md, "Models"), checked once for all of them.

Evaluation and head-only training call ``head`` on features computed once per image, so
``head`` on those features must give exactly what ``forward`` gives, for any shot count; the
output has one channel per way plus background; binary-only methods refuse N-way clearly.
"""
import pytest
import torch

from fsslib.models import EXCLUDED, METHODS, build_model

# No network here: the DINOv2 row is built with random weights.
SMALL = {"pfenet": {"width": 16}, "mspf": {"width": 16}, "msdnet": {}, "dinov2-proto": {"weights": None}}
BINARY_ONLY = {"ssp", "pfenet", "mspf", "msdnet", "finetune", "fomaml"}


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


@pytest.mark.parametrize("name", sorted(METHODS))
def test_excluded_support_pixels_act_exactly_as_the_old_ignore_coding(name):
    """Pixels that are neither foreground nor background (other ways' objects, unlabelled scribble
    pixels) are coded 254 (EXCLUDED) instead of 255 (void). Next to real void pixels, every method
    gives bit for bit what it gave with the old coding: all of them but PANet and ProtoNet with
    their default (and DINOv2-proto, ProtoNet on other features), and those with
    ``background="labelled"`` (the rule before EXCLUDED)."""
    args = {"background": "labelled"} if name in ("panet", "protonet", "dinov2-proto") else {}
    torch.manual_seed(0)
    net = build_model(name, **SMALL.get(name, {}), **args)
    b = batch(k=2, seed=5)  # support masks with void rows
    masks = b["support_masks"].clone()
    masks[..., 40:48, :] = EXCLUDED  # across foreground and background
    old_coding = masks.masked_fill(masks == EXCLUDED, 255)
    query_mask = torch.randint(0, 2, (2, 64, 64), generator=torch.Generator().manual_seed(6))
    query_mask[:, :2] = 255
    for training in (False, True):
        net.train(training)
        results = []
        for m in (masks, old_coding):
            torch.manual_seed(1)  # dropout draws the same
            episode = {**b, "support_masks": m, "query_mask": query_mask}
            with torch.no_grad():
                out = net(episode)
                results.append((out, net.loss(out, episode) if training else None))
        (new, new_loss), (old, old_loss) = results
        assert new.keys() == old.keys()
        for key in new:
            pairs = zip(new[key], old[key]) if isinstance(new[key], (list, tuple)) else [(new[key], old[key])]
            assert all(torch.equal(x, y) for x, y in pairs), key
        if training:
            assert torch.equal(new_loss[0], old_loss[0]) and new_loss[1] == old_loss[1]
