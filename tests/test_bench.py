"""The benchmark command's measurements, on tiny inputs (the real sizes take minutes on a CPU)."""
from fsslib.experiments.bench import format_bench, inference_rows, training_rows


def test_inference_rows_time_every_method_and_shot():
    rows = inference_rows(["panet", "msdnet"], shots=(1, 2), repeats=1, size=65)
    assert [(r.method, r.shot) for r in rows] == [("panet", 1), ("panet", 2), ("msdnet", 1), ("msdnet", 2)]
    for row in rows:
        assert row.episode_s > 0 and row.backbone_s > 0 and 0 < row.head_s < row.episode_s
        # the cache removes the backbone from every episode, so it can only help
        assert row.cache_speedup(images=100, episodes=5000) > 1
        # multiply-adds: an episode of these two methods is K + 1 extractions and the head, exactly
        assert row.extract_macs > row.head_macs > 0
        assert row.episode_macs == (row.shot + 1) * row.extract_macs + row.head_macs
        assert row.ratio_torchvision_macs == row.episode_macs / row.torchvision_macs > 0
        # the cache removes extraction, never the head: between 1 and episode / head
        assert 1 < row.cache_speedup_by_macs(images=100, episodes=5000) < row.episode_macs / row.head_macs


def test_training_rows_run_each_method_in_its_own_process():
    rows = training_rows(["protonet", "pfenet"], steps=1)
    assert [r[0] for r in rows] == ["protonet", "pfenet"]
    (_, _, protonet_peak, protonet_cached, _), (_, seconds, _, pfenet_cached, params) = rows
    assert seconds > 0 and protonet_peak > 50 * 2**20 and params > 0
    assert (protonet_cached, pfenet_cached) == (False, True)  # the recipes: frozen backbones train on cached features
    (ssp,) = inference_rows(["ssp"], shots=(1,), repeats=1, size=65)
    first, second, cells = ssp.background_selected
    assert cells == 9 * 9 and 1 <= first <= cells and 1 <= second <= cells  # 65 px: 9 x 9 cells at stride 8
    assert ssp.head_all_background_s > 0
    assert ssp.head_all_background_macs > ssp.head_macs  # attention over every cell, not a few
    table = format_bench([ssp], rows)
    assert "| ssp | 1 |" in table and "| pfenet |" in table and f"of {cells} cells in S_b" in table
