import pandas as pd
import pytest

from fsslib.engine.protocol import EvalProtocol
from fsslib.experiments.ablation import Variant, ablation_table, format_ablation, run_ablation


@pytest.fixture
def fast_env(synthetic_source, tmp_path, monkeypatch):
    monkeypatch.setenv("FSSLIB_FAST", "1")
    monkeypatch.setenv("FSSLIB_DATA", str(synthetic_source.root.parent))
    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    return tmp_path


def test_ablation_pairs_seeds_reuses_results_and_reports_failures(fast_env):
    variants = [Variant("scale 20", "protonet"),
                Variant("scale 10 at test", "protonet", eval_args={"scale": 10.0}, trained_as="scale 20"),
                Variant("box supports", "protonet", protocol_args={"support_annotation": "box"}, trained_as="scale 20"),
                Variant("broken", "protonet", eval_args={"no_such_field": 1}, trained_as="scale 20")]
    protocol = EvalProtocol(episodes=8, seeds=(0,), shots=(1,))
    rows = run_ablation(variants, seeds=(0, 1), protocol=protocol, results=fast_env / "results", progress=False)
    assert [f[0] for f in rows.attrs["failures"]] == ["broken", "broken"]
    assert set(rows.method) == {"scale 20", "scale 10 at test", "box supports"}
    assert set(rows.train_seed) == {0, 1}
    # Cosine scale does not change the argmax: identical predictions, a zero paired difference.
    table = ablation_table(rows, reference="scale 20").set_index("method")
    assert table.loc["scale 10 at test", "diff"] == pytest.approx(0) and not table.loc["scale 10 at test", "resolved"]
    assert "not resolved" in format_ablation(table.reset_index())
    again = run_ablation(variants[:3], seeds=(0, 1), protocol=protocol, results=fast_env / "results", progress=False)
    pd.testing.assert_frame_equal(again.sort_values(list(again.columns)).reset_index(drop=True),
                                  rows.sort_values(list(rows.columns)).reset_index(drop=True), check_dtype=False)


def test_unknown_reference_variant_is_named(fast_env):
    with pytest.raises(ValueError, match="trained_as names unknown variants"):
        run_ablation([Variant("a", "protonet", trained_as="b")], progress=False)


def test_every_named_table_is_well_formed():
    """Rows name real methods, config fields and reference rows, so a long run cannot fail late."""
    from dataclasses import fields

    from fsslib.engine.protocol import EvalProtocol
    from fsslib.experiments.tables import TABLES
    from fsslib.models.registry import config_fields

    protocol_fields = {f.name for f in fields(EvalProtocol)}
    for name, (variants, references) in TABLES.items():
        names = [v.name for v in variants]
        assert len(set(names)) == len(names), name
        for v in variants:
            valid = config_fields(v.model)
            assert set(v.model_args) <= set(valid) and set(v.eval_args) <= set(valid), (name, v.name)
            assert set(v.protocol_args) <= protocol_fields, (name, v.name)
            assert v.trained_as is None or v.trained_as in names, (name, v.name)
        assert set(references) <= set(names) and set(references.values()) <= set(names), name


def test_recipe_changes_by_method_apply_to_their_method_and_name_only_its_runs():
    from fsslib.experiments.ablation import _slug, method_recipe

    recipe = {"steps": 150, "by_method": {"pfenet": {"lr": 2e-3}}}
    assert method_recipe(recipe, "pfenet") == {"steps": 150, "lr": 2e-3}
    assert method_recipe(recipe, "ssp") == {"steps": 150}
    ssp, pfenet = Variant("s", "ssp"), Variant("p", "pfenet")
    assert _slug(ssp, recipe) == _slug(ssp, {"steps": 150})  # the SSP runs are the same runs
    assert _slug(pfenet, recipe) != _slug(pfenet, {"steps": 150})
    assert _slug(ssp, {}) == _slug(ssp, None)  # the standard recipe keeps its names


def test_run_and_evaluation_names_say_what_they_hold(tmp_path, monkeypatch):
    from fsslib.engine.protocol import EvalProtocol
    from fsslib.experiments.ablation import _slug, evaluation_path, variant_run_dir

    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("FSSLIB_FAST", raising=False)
    off = Variant("SSP, SSFP off", "ssp", {"use_ssfp": False, "refine": True})  # refine: a default, not named
    box = Variant("box supports", "panet", {"par_weight": 1.0}, protocol_args={"support_annotation": "box"})
    assert _slug(off).startswith("ssp-use_ssfp=off-") and "refine" not in _slug(off)
    assert variant_run_dir(off, 2, 1).name.endswith("-fold2-seed1-pre0")
    name = evaluation_path(tmp_path, box, EvalProtocol(), 0, 3).name
    assert name.startswith("panet-") and "-support_annotation=box-" in name and name.endswith("-fold0-seed3-pre0.csv")
    # Different switches, different names; the same switches, the same name whatever the row is called.
    assert _slug(off) != _slug(Variant("x", "ssp", {"use_ssfp": True}))
    assert _slug(off) == _slug(Variant("another row name", "ssp", {"use_ssfp": False, "refine": True}))


def test_work_stored_under_earlier_names_is_adopted(tmp_path, monkeypatch):
    from fsslib.engine.protocol import EvalProtocol
    from fsslib.experiments.ablation import _slug, episode_path, evaluation_path, variant_run_dir

    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("FSSLIB_FAST", raising=False)
    variant = Variant("PAR off", "panet", {"par_weight": 0.0})
    earlier_run = tmp_path / "runs" / "ablation" / f"{_slug(variant, readable=False)}-fold0-seed0-pre0"
    earlier_run.mkdir(parents=True)
    (earlier_run / "log.csv").write_text("step,loss\n")
    run = variant_run_dir(variant, 0, 0)
    assert run != earlier_run and (run / "log.csv").exists() and not earlier_run.exists()

    results = tmp_path / "evaluations"
    results.mkdir()
    new = evaluation_path(results, variant, EvalProtocol(), 0, 0)
    new.unlink(missing_ok=True)
    earlier = next(results.glob("*.csv"), None)
    assert earlier is None  # nothing stored yet: nothing adopted, nothing created
    earlier = results / new.name.replace("-par_weight=0.0", "")
    earlier.write_text("a\n1\n")
    episode_path(earlier).write_text("b\n2\n")
    path = evaluation_path(results, variant, EvalProtocol(), 0, 0)
    assert path == new and path.read_text() == "a\n1\n" and episode_path(path).read_text() == "b\n2\n"
    assert not earlier.exists()
