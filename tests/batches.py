"""Random episode batches around given support masks, for the prior-mask methods' tests."""
import torch


def episode_batch(masks: torch.Tensor, seed: int = 0) -> dict:
    """``masks [B, K, S, S]`` -> a batch with random images and a random query mask (255 borders)."""
    b, k, size = masks.shape[0], masks.shape[1], masks.shape[-1]
    masks = masks.clone()
    masks[..., :3, :] = 255
    g = torch.Generator().manual_seed(seed)
    query_mask = torch.randint(0, 2, (b, size, size), generator=g)
    query_mask[:, -2:] = 255
    return {"query_img": torch.randn(b, 3, size, size, generator=g),
            "support_imgs": torch.randn(b, k, 3, size, size, generator=g),
            "support_masks": masks, "query_mask": query_mask}
