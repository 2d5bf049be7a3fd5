"""The interactive ablation explorer of notebook 07: pick a method, fold, shot and switches; see the row.

A *selection* is a method and the values of its ablation switches (the ``explorer_switches`` of its
record: the config fields the method tables vary). :func:`find_variant` looks it up among the rows
of the tables that ``reproduce`` runs (the trained rows and the test-time rows);
:func:`evaluate_selection` then reads its rows in the table CSVs that ``reproduce`` wrote (the
default profile's ``results/<table>.csv``, the ones the README shows) when every training seed is
there, and otherwise trains the selection with a short recipe (one seed, a few hundred test
episodes), labelled as such. The widgets only call these functions, so the notebook can also be run
top to bottom without a browser (as the tests do).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..engine.protocol import EvalProtocol
from ..models.registry import METHODS, method_class, method_record
from ..runtime import fast_mode
from .ablation import Variant, ablation_table, run_ablation, train_variant
from .profiles import PROFILES, Profile
from .profiles import stored_rows as stored_rows_of_table
from .tables import tables

# METHODS is re-exported: the notebook's method menu lists every method in the order of the tables.
__all__ = ["METHODS", "default_switches", "evaluate_selection", "find_variant", "paper_row", "selection_model",
           "selection_variant", "switches_of", "tables_beside_papers"]


def switches_of(method: str) -> dict[str, tuple[str, ...]]:
    """Switch label -> the config field(s) it sets (several fields can move together), from the record."""
    return method_record(method).explorer_switches


def _field_value(method: str, field: str, on: bool):
    return (1.0 if on else 0.0) if field == "par_weight" else on


def _switch_state(variant: Variant) -> dict[str, bool]:
    """The switches of a table row as the model sees them at test time (``eval_args`` applied)."""
    config = method_class(variant.model).config_class(**{**variant.model_args, **variant.eval_args})
    return {label: all(bool(getattr(config, f)) for f in fields)
            for label, fields in switches_of(variant.model).items()}


def default_switches(method: str) -> dict[str, bool]:
    config = method_class(method).config_class()
    return {label: all(bool(getattr(config, f)) for f in fields) for label, fields in switches_of(method).items()}


@dataclass
class Found:
    """A selection located in a table: the table key, the row, and whether the row is a test-time one."""

    table: str
    variant: Variant


def find_variant(method: str, switches: dict[str, bool]) -> Found | None:
    """The first table row (main comparison first) with ``method`` and exactly these switch values.
    Rows with weak supports or N-way episodes are skipped: they change the protocol, not the model."""
    for table in tables():
        for variant in table.variants:
            if variant.model == method and not variant.protocol_args and _switch_state(variant) == switches:
                return Found(table.key, variant)
    return None


def selection_variant(method: str, switches: dict[str, bool]) -> Variant:
    """A new row for a combination that no table has (trained with the tables' head settings)."""
    args = dict(method_record(method).synthetic_head)
    for label, on in switches.items():
        for field in switches_of(method)[label]:
            args[field] = _field_value(method, field, on)
    name = ", ".join(f"{label} {'on' if on else 'off'}" for label, on in switches.items()) or method
    return Variant(f"{method}: {name}", method, args)


@dataclass
class Selection:
    variant: Variant
    table: str | None
    #: "stored" (the profile's results/<table>.csv) or "quick" (trained here, short recipe, one seed)
    source: str
    rows: pd.DataFrame
    profile: Profile
    recipe: dict

    def summary(self, shot: int) -> pd.DataFrame:
        table = ablation_table(self.rows, self.variant.name)
        return table[table.shot == shot].drop(columns=[c for c in ("reference",) if c in table])


#: 60 steps of 8 episodes, with the default profile's higher learning rates for the heads that
#: would otherwise not leave the all-background solution in so few steps.
QUICK_RECIPE = {"steps": 60, "by_method": PROFILES["default"].recipe["by_method"]}
QUICK_EPISODES = 200


def stored_rows(profile: Profile, table: str, name: str, fold: int) -> pd.DataFrame | None:
    """The rows of ``name`` in the table CSV that ``reproduce`` wrote (``results/<table>.csv``), or
    None unless every training seed of the profile is there."""
    rows = stored_rows_of_table(table, profile)
    if rows is None:
        return None
    rows = rows[(rows.method == name) & (rows.fold == fold)]
    return rows.reset_index(drop=True) if set(profile.seeds) <= set(rows.train_seed) else None


def evaluate_selection(method: str, fold: int, switches: dict[str, bool], profile: str = "default") -> Selection:
    """Rows of the selection: stored when the profile has them for every seed, else a quick training."""
    chosen = PROFILES[profile]
    found = find_variant(method, switches)
    variant = found.variant if found else selection_variant(method, switches)
    table = found.table if found else None
    if found and not fast_mode():
        rows = stored_rows(chosen, table, variant.name, fold)
        if rows is not None:
            return Selection(variant, table, "stored", rows, chosen, chosen.recipe)
    if variant.trained_as:  # a test-time row: train the row whose weights it uses
        trained = next(v for t in tables() if t.key == table for v in t.variants if v.name == variant.trained_as)
        variants = [trained, variant]
    else:
        variants = [variant]
    protocol = EvalProtocol(episodes=8 if fast_mode() else QUICK_EPISODES, seeds=(0,), shots=(1, 5))
    rows = run_ablation(variants, fold=fold, seeds=(0,), protocol=protocol, progress=False, recipe_args=QUICK_RECIPE)
    return Selection(variant, table, "quick", rows[rows.method == variant.name], chosen, QUICK_RECIPE)


def selection_model(selection: Selection, fold: int):
    """The trained model of the selection (training seed 0), with its test-time switches applied,
    on the device it was trained on (a GPU when there is one)."""
    trained = selection.variant
    if trained.trained_as:
        trained = next(v for t in tables() if t.key == selection.table
                       for v in t.variants if v.name == trained.trained_as)
    seed = selection.profile.seeds[0] if selection.source == "stored" else 0
    model = train_variant(trained, fold, seed, recipe_args=selection.recipe)
    for key, value in selection.variant.eval_args.items():
        setattr(model.config, key, value)
    return model.eval()


def paper_row(selection: Selection, shot: int) -> str:
    if selection.table is None:
        return "no table of the paper has this combination"
    value = next(t for t in tables() if t.key == selection.table).paper_value(selection.variant, shot)
    return value or "the paper reports no number for this row"


def tables_beside_papers(profile: str = "default") -> dict[str, pd.DataFrame]:
    """Each table as stored by ``reproduce`` (``results/<table>.csv``) with the paper's column;
    tables that have not been produced are left out."""
    chosen = PROFILES[profile]
    out = {}
    for table in tables():
        rows = stored_rows_of_table(table.key, chosen)
        if rows is None:
            continue
        result = ablation_table(rows, table.references)
        by_name = {v.name: v for v in table.variants}
        result["paper (PASCAL-5i)"] = [table.paper_value(by_name[m], s) if m in by_name else ""
                                       for m, s in zip(result.method, result.shot)]
        out[table.title] = result.round(2)
    return out
