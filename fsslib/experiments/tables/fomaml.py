"""The optimisation family on the synthetic benchmark (notebook 10): FO-MAML's inner loop.

The trained rows vary what the inner loop does in training and testing alike: the number of
inner steps (1, 5, 10; 5 is the main table's row) and ANIL, where only the last layer adapts.
Two test-only rows evaluate the 5-step model with the inner loop changed at test time: no step
at all (what the meta-learned initialisation predicts before it sees the support) and 10 steps
(does adapting longer than in training help?). Every row's reference is the 5-step model, on
the same training seeds and test episodes. No paper reports these numbers for segmentation, and
the real-data profiles leave the table out (each row would be a 30,000-step run per fold).
"""
from __future__ import annotations

from ...models.fomaml import RECORD as FOMAML
from ..ablation import Variant

KEY = FOMAML.name
TITLE = "FO-MAML: inner-loop steps and ANIL"

FIVE_STEPS = "FO-MAML, 5 inner steps"
FOMAML_VARIANTS = [
    Variant(FIVE_STEPS, FOMAML.name, {}),
    Variant("FO-MAML, 1 inner step", FOMAML.name, {"inner_steps": 1}),
    Variant("FO-MAML, 10 inner steps", FOMAML.name, {"inner_steps": 10}),
    Variant("ANIL, 5 inner steps", FOMAML.name, {"anil": True}),
    Variant("5-step model, no step at test", FOMAML.name, {}, eval_args={"inner_steps": 0}, trained_as=FIVE_STEPS),
    Variant("5-step model, 10 steps at test", FOMAML.name, {}, eval_args={"inner_steps": 10},
            trained_as=FIVE_STEPS),
]
FOMAML_REFERENCES = {v.name: FIVE_STEPS for v in FOMAML_VARIANTS[1:]}
