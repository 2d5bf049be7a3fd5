"""The ablation explorer finds the table row of a switch combination, or builds a new one."""
from fsslib.experiments.explorer import METHODS, default_switches, find_variant, selection_variant, switches_of
from fsslib.models.registry import method_class


def test_every_switch_names_config_fields_of_its_method():
    for method, switches in ((m, switches_of(m)) for m in METHODS):
        fields = set(method_class(method).config_class.__dataclass_fields__)
        assert all(set(names) <= fields for names in switches.values()), method


def test_selections_map_to_the_rows_of_the_tables():
    assert find_variant("mspf", default_switches("mspf")).variant.name == "MSPF"  # main comparison first
    assert find_variant("ssp", default_switches("ssp")).variant.name == "SSP"
    found = find_variant("ssp", {**default_switches("ssp"), "refinement round": False})
    assert found.table == "ssp" and found.variant.name in ("+ SSL", "SSP, refinement off at test")
    assert find_variant("panet", {"prototype alignment (PAR)": False}).variant.name == "PANet, PAR off"
    no_prior = find_variant("mspf", {**default_switches("mspf"), "multi-scale prior": False})
    assert no_prior.table == "mspf_table3" and no_prior.variant.name == "single-scale prior + multi-scale fusion"


def test_a_combination_no_table_has_becomes_a_new_variant_with_the_table_head():
    switches = {**default_switches("mspf"), "scale weights": False, "auxiliary loss": False}
    assert find_variant("mspf", switches) is None
    variant = selection_variant("mspf", switches)
    assert variant.model_args["scale_weights"] is False and variant.model_args["aux_loss"] is False
    assert variant.model_args["width"] == 64  # the synthetic head of the MSPF tables
    assert selection_variant("panet", {"prototype alignment (PAR)": False}).model_args == {"par_weight": 0.0}


def test_stored_rows_come_from_the_table_csv_only_when_every_training_seed_is_there(tmp_path, monkeypatch):
    import pandas as pd

    from fsslib.experiments.explorer import stored_rows
    from fsslib.experiments.reproduce import PROFILES

    monkeypatch.setenv("FSSLIB_RUNS", str(tmp_path / "runs"))
    profile = PROFILES["default"]
    assert stored_rows(profile, "main", "SSP", 0) is None  # no CSV yet
    rows = pd.DataFrame([dict(method=m, fold=0, shot=1, train_seed=s, seed=0, **{"class": 1}, intersection=1, union=2)
                         for m in ("SSP", "PFENet") for s in (0, 1)])
    (tmp_path / "results").mkdir()
    rows.to_csv(tmp_path / "results" / "main.csv", index=False)
    assert stored_rows(profile, "main", "SSP", 0) is None  # seed 2 missing
    rows.assign(train_seed=2).to_csv(tmp_path / "results" / "main.csv", mode="a", header=False, index=False)
    got = stored_rows(profile, "main", "SSP", 0)
    assert set(got.method) == {"SSP"} and sorted(set(got.train_seed)) == [0, 1, 2]
    assert stored_rows(profile, "main", "SSP", 1) is None  # another fold
