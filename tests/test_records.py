"""The method records: each method's facts in its own module, everything else built from them."""
import re
from dataclasses import fields
from pathlib import Path

import pytest

import fsslib
from fsslib.experiments.tables import tables
from fsslib.models.registry import METHOD_MODULES, METHODS, method_record, records

ROOT = Path(fsslib.__file__).parent


@pytest.mark.parametrize("name", METHODS)
def test_only_its_module_and_the_registry_name_a_method(name):
    # `grep -rl '"name"' fsslib`: adding a method is its file, its tests and (optionally) a notebook.
    naming = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if f'"{name}"' in p.read_text()}
    assert naming <= {f"models/{name.replace('-', '_')}.py", "models/registry.py"}, naming
    registry_lines = [line for line in (ROOT / "models/registry.py").read_text().splitlines() if f'"{name}"' in line]
    assert len(registry_lines) == 1, registry_lines


def test_each_record_lives_in_the_module_named_after_it():
    for name, module in METHOD_MODULES.items():
        record = method_record(name)
        assert record.name == name and module.endswith(f".{name.replace('-', '_')}")
        assert record.model_class.__module__ == module


@pytest.mark.parametrize("record", records(), ids=lambda r: r.name)
def test_record_fields_name_real_config_fields(record):
    config_fields = {f.name for f in fields(record.config_class)}
    named = {*record.synthetic_model_args, *record.synthetic_head, *record.main_row_args,
             *(f for switch in record.explorer_switches.values() for f in switch)}
    assert named <= config_fields, named - config_fields
    if record.real_data_recipe is not None:
        assert set(record.real_data_recipe) == {"pascal", "coco"}
        for recipe in record.real_data_recipe.values():
            assert set(recipe["model_args"]) <= config_fields


def test_main_rows_share_their_runs_with_the_method_tables():
    # A main-table row trains the same run as its paper table's row: same method, same arguments.
    all_tables = tables()
    main = next(t for t in all_tables if t.key == "main")
    trained_elsewhere = {(v.model, tuple(sorted(v.model_args.items()))) for t in all_tables if t.key != "main"
                         for v in t.variants if not v.trained_as}
    for row in main.variants:
        if row.trained_as or method_record(row.model).main_row_args == {}:
            continue
        assert (row.model, tuple(sorted(row.model_args.items()))) in trained_elsewhere, row.name


@pytest.mark.parametrize("benchmark", ["synthetic", "pascal5i"])
def test_main_table_has_one_row_per_record_in_registry_order(benchmark):
    main = next(t for t in tables(benchmark) if t.key == "main")
    trained = [v for v in main.variants if not v.trained_as]
    rows = [r for r in records() if r.main_row and (r.main_row_benchmarks is None or benchmark in r.main_row_benchmarks)]
    assert [v.model for v in trained] == [r.name for r in rows]
    assert [v.name for v in trained] == [r.main_row for r in rows]


def test_paper_citations_name_no_local_file():
    for record in records():
        assert not re.search(r"seeds?/|\.txt|shared/", record.paper), record.paper
