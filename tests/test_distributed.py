"""Data-parallel training: 2 gloo processes = 1 process accumulating over the same 2 slices."""
import socket

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fsslib.data.synthetic import SyntheticSource
from fsslib.engine.episodic import train_fewshot
from fsslib.engine.trainer import TrainConfig
from fsslib.models import build_model

CONFIG = dict(model="protonet", steps=3, batch_size=4, log_every=1, checkpoint_every=2, lr=1e-2, image_size=64,
              model_args={"feature_stage": "layer3", "freeze_bn": True})
# BatchNorm frozen, as in every recipe: with BatchNorm training, DDP keeps rank 0's running
# statistics (its buffers are broadcast) while accumulation updates them once per chunk.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, root: str, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train_fewshot(TrainConfig(**CONFIG, device="cpu"), run_dir, progress=False,
                      source=SyntheticSource(root))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(synthetic_source, synthetic_root, tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(synthetic_root), str(tmp_path / "ddp")), nprocs=2)
    single = train_fewshot(TrainConfig(**CONFIG, accumulate=2, device="cpu"), tmp_path / "single", progress=False,
                           source=synthetic_source)
    ddp_log, single_log = pd.read_csv(tmp_path / "ddp" / "log.csv"), pd.read_csv(tmp_path / "single" / "log.csv")
    assert ddp_log["step"].tolist() == [1, 2, 3]
    assert torch.allclose(torch.tensor(ddp_log["loss"].values), torch.tensor(single_log["loss"].values), atol=1e-5)
    ddp_weights = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    torch.manual_seed(0)
    initial = build_model("protonet", **CONFIG["model_args"]).state_dict()
    for name, value in single.state_dict().items():
        assert torch.allclose(ddp_weights[name], value, atol=1e-5), name
    assert any(not torch.equal(initial[n], v) for n, v in single.state_dict().items())  # weights did train


def test_the_global_batch_must_split_evenly(synthetic_source, tmp_path):
    import pytest

    with pytest.raises(ValueError, match="batch_size=4 .* divisible by world size 1 x accumulate 3"):
        train_fewshot(TrainConfig(**CONFIG, accumulate=3, device="cpu"), tmp_path / "run", progress=False,
                      source=synthetic_source)
