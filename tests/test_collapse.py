"""The collapse study's candidates and its table; the synthetic recipe's head switches."""
import pandas as pd

from fsslib.experiments.collapse import (
    AUTHORS_HEAD,
    CANDIDATES,
    HEADS,
    candidate_variants,
    collapse_table,
    format_collapse_table,
)
from fsslib.experiments.configs import real_data_recipes, synthetic_model_args


def test_every_candidate_is_the_authors_head_plus_its_own_switches():
    variants = candidate_variants()
    assert variants[0].model == "protonet" and len(variants) == 1 + len(HEADS) * len(CANDIDATES)
    for variant in variants[1:]:
        head_name, candidate = variant.name.split(" | ")
        head = next(h for h in HEADS if h.name == head_name)
        model_args, train_args = CANDIDATES[candidate]
        expected = {**head.model_args, **AUTHORS_HEAD, **model_args}
        if head.model == "mspf" and "projection_dropout" in model_args:
            expected["aspp_dropout"] = model_args["projection_dropout"]
        assert variant.model_args == expected and variant.train_args == train_args


def test_the_synthetic_recipe_turns_the_prior_shortcut_on_and_the_authors_recipes_do_not():
    for method in ("pfenet", "mspf"):
        assert synthetic_model_args(method)["prior_shortcut"] == 3.0
        for recipe in real_data_recipes(method).values():
            assert "prior_shortcut" not in recipe["model_args"]
    assert "prior_shortcut" not in synthetic_model_args("msdnet")


def test_collapse_table_counts_collapsed_seeds_and_seeds_below_half_of_protonet():
    scores = pd.DataFrame({"method": ["ProtoNet (MAP + cosine)"] * 2 + ["PFENet | x"] * 2,
                           "fold": 0, "shot": 1, "train_seed": [0, 1, 0, 1], "miou": [60.0, 40.0, 4.9, 25.0]})
    table = collapse_table(scores)
    row = table[table["head"] == "PFENet"].iloc[0]
    assert (row.candidate, row.collapsed, row.below_half_protonet, row.per_seed) == ("x", 1, 1, "4.9 / 25.0")
    assert "| PFENet | x | 2 | 1/2 | 1/2 |" in format_collapse_table(table)
