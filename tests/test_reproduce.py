"""``reproduce --profile fast`` end to end: every table and figure, reuse of finished work, failures."""
import re

import pytest

from fsslib.__main__ import main
from fsslib.experiments import reproduce as reproduce_module
from fsslib.experiments.ablation import Variant
from fsslib.experiments.reproduce import PROFILES, Table, plan_jobs, tables


@pytest.fixture
def isolated(synthetic_source, tmp_path, monkeypatch):
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FSSLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("FSSLIB_FAST", "1")  # reproduce sets it; monkeypatch restores the old value after
    return tmp_path


def test_a_run_shared_by_several_tables_is_one_job():
    jobs = plan_jobs(PROFILES["default"])
    mspf = [j for j in jobs if any("MSPF" in names for names in j.rows.values())]
    assert len(mspf) == 3  # one per training seed
    assert set(mspf[0].rows) == {"main", "mspf_table3", "mspf_table4", "mspf_table5", "mspf_pfenet"}
    trained = {(v.model, str(v.model_args)) for t in tables() for v in t.variants if v.trained_as is None}
    assert len(jobs) == 3 * len(trained)


def test_reproduce_fast_writes_every_table_and_figure_and_reuses_finished_runs(isolated, capsys):
    assert main(["reproduce", "--profile", "fast"]) == 0
    out = capsys.readouterr().out
    assert "classes: 20" in out and "novel classes" in out
    results = isolated / "results" / "fast"
    text = (results / "tables.md").read_text()
    for table in tables():
        assert f"## {table.title}" in text
        for variant in table.variants:
            assert f"| {variant.name} |" in text, variant.name
        assert (results / f"{table.key}.csv").stat().st_size > 0
        assert (isolated / "figures" / "fast" / f"table_{table.key}.png").exists()
    assert "## Claims scorecard" in text and (results / "claims.csv").stat().st_size > 0
    assert (results / "factors.csv").stat().st_size > 0
    for figure in ("episodes.png", "learning_curves.png", "qualitative_predictions.png", "factors.png"):
        assert (isolated / "figures" / "fast" / figure).exists()
    assert not list((isolated / "figures").glob("*.png")), "the fast profile wrote over the default figures"
    assert "Smoke test, the numbers mean nothing" in text
    weights = sorted((isolated / "runs" / "ablation").glob("*/model.pt"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    raw = {t.key: (results / f"{t.key}.csv").read_text() for t in tables()}
    assert len(weights) == len(plan_jobs(PROFILES["fast"]))

    assert main(["reproduce", "--profile", "fast"]) == 0  # everything reused: no run is trained again
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert {t.key: (results / f"{t.key}.csv").read_text() for t in tables()} == raw  # stored evaluations


def test_a_failed_run_is_reported_and_the_rest_completes(isolated, monkeypatch, capsys):
    good = Variant("ProtoNet", "protonet", {})
    broken = Variant("broken", "protonet", {"no_such_field": 1})
    monkeypatch.setattr(reproduce_module, "tables",
                        lambda benchmark="synthetic": [Table("main", "Main comparison", [good, broken], {"broken": "ProtoNet"})])
    monkeypatch.setattr("fsslib.experiments.report.main_table", lambda rows, *args: rows.method.unique().tolist().__str__())
    failures = reproduce_module.reproduce("fast")
    assert len(failures) == 1 and "broken" in failures[0] and "no_such_field" in failures[0]
    out = capsys.readouterr().out
    assert "FAILED Main comparison / ['broken']" in out
    assert "ProtoNet" in (isolated / "results" / "fast" / "tables.md").read_text()


def test_the_report_reads_stored_files_and_never_trains_or_loads_a_model(isolated, monkeypatch):
    from fsslib.experiments import ablation, report

    table = Table("main", "Main comparison", [Variant("ProtoNet", "protonet", {}), Variant("PANet", "panet", {})],
                  {"PANet": "ProtoNet"})
    monkeypatch.setattr(reproduce_module, "tables", lambda benchmark="synthetic": [table])
    reproduce_module.reproduce("fast")
    written = (isolated / "results" / "fast" / "tables.md").read_text()

    def forbidden(*args, **kwargs):
        raise AssertionError("the report trained or loaded a model")

    for module in (ablation, report):
        monkeypatch.setattr(module, "train_variant", forbidden)
    monkeypatch.setattr(ablation, "evaluate", forbidden)
    report.write_report(PROFILES["fast"], [table])
    rewritten = (isolated / "results" / "fast" / "tables.md").read_text()
    assert rewritten == written
    protonet_rows = [line for line in written.splitlines() if re.match(r"\| ProtoNet \| [15] \| \d", line)]
    # parameters and ms/episode come from the measurements stored after training
    assert protonet_rows and all(re.search(r"\| \d+\.\d\dM \| \d+ \|", line) for line in protonet_rows)


def test_the_profile_follows_the_device_and_the_first_line_says_which(isolated, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert reproduce_module.default_profile_name() == "gpu"
    gpu = PROFILES["gpu"]
    assert (gpu.recipe, gpu.seeds, gpu.episodes, gpu.shots) == ({}, (0, 1, 2), 1000, (1, 5))  # the standard recipe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert reproduce_module.default_profile_name() == "default"
    monkeypatch.setattr(reproduce_module, "tables", lambda benchmark="synthetic": [Table("main", "Main comparison",
                                                                   [Variant("ProtoNet", "protonet", {})], {})])
    monkeypatch.setattr("fsslib.experiments.report.main_table", lambda rows, *args: "")
    reproduce_module.reproduce("fast")
    assert capsys.readouterr().out.splitlines()[0].startswith("profile fast (as asked)")


def test_collapse_check_pairs_each_seed_and_shot_with_the_reference():
    import pandas as pd

    from fsslib.experiments.report import below_half_of_reference, collapse_check

    scores = pd.DataFrame([
        ("ProtoNet", 0, 1, 0, 60.0), ("ProtoNet", 0, 1, 1, 40.0), ("ProtoNet", 0, 5, 0, 70.0),
        ("PFENet", 0, 1, 0, 29.9),  # below half of 60 on its own seed
        ("PFENet", 0, 1, 1, 29.9),  # above half of 40
        ("PFENet", 0, 5, 0, 35.0),  # exactly half: holds
    ], columns=["method", "fold", "shot", "train_seed", "miou"])
    low = below_half_of_reference(scores, "ProtoNet")
    assert low[["method", "shot", "train_seed"]].values.tolist() == [["PFENet", 1, 0]]
    assert "1 exception(s)" in collapse_check(scores, "ProtoNet") and "training seed 0: 29.9" in collapse_check(scores, "ProtoNet")
    assert "**holds**" in collapse_check(scores[scores.train_seed == 1], "ProtoNet")


def test_committed_tables_are_read_as_references_with_every_row(capsys, monkeypatch):
    """The notebooks show the committed default-profile tables: each must load and hold every row
    of its table for every training seed (a table changed without rerunning `make reproduce` fails here)."""
    from fsslib.experiments.ablation import ablation_table
    from fsslib.experiments.reproduce import stored_or_computed, stored_rows

    monkeypatch.delenv("FSSLIB_FAST", raising=False)
    monkeypatch.delenv("FSSLIB_RUNS", raising=False)  # the repository's results/
    profile = PROFILES["default"]
    for table in tables():
        assert stored_rows(table.key, profile) is not None, f"results/{table.key}.csv is not committed"
        rows = stored_or_computed([table.key], profile)
        assert "read-only" in capsys.readouterr().out
        result = ablation_table(rows, table.references)
        for variant in table.variants:
            row = result[result.method == variant.name]
            assert set(row.shot) == set(variant.protocol_args.get("shots", profile.shots)), variant.name
            assert (row.seeds == len(profile.seeds)).all(), variant.name
