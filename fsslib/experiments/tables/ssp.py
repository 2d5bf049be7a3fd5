"""SSP's ablations on the synthetic benchmark (notebook 05): each component added in turn, then
each one removed at test time from the trained SSP.

The cumulative rows follow the paper's ablation: the prototype baseline, then the self-support
foreground prototype (SSFP), the self-support background prototype (SSBP), the adaptive one
(ASBP, mixed as ``0.3 SSBP + 0.7 ASBP``), the self-support loss (SSL) and the refinement round.
Each row's reference is the row before it, so its paired difference is what that step adds.

Only four variants train (about 5-7 CPU minutes per seed each):

- ``baseline``: every SSP switch off, i.e. support prototypes matched with cosine x 10 on layer3
  and trained with the query cross-entropy alone;
- ``self-support in training``: SSFP, SSBP and ASBP in the forward pass, so the loss is taken on
  the self-supported prediction ``out_1``; no SSL, no refinement;
- ``+ SSL``: the same with the query and support self-matching losses;
- ``+ refinement = SSP``: every switch on (the authors' ``--refine`` recipe).

The self-support modules have no parameters, so SSFP, SSBP and ASBP are first added at test time
to the baseline's weights; the difference between "+ ASBP (test only)" and "self-support in
training" is then what *training through* the self-support module adds. Splitting that from the
SSL costs one training variant; drop "self-support in training" (and point "+ SSL" at
"+ ASBP (test only)") to save it.

The rows after SSP evaluate its weights with one component switched off at test (reference:
SSP). All models are trained 1-shot; the protocol evaluates them at 1 and 5 shots.
"""
from __future__ import annotations

from ...models.ssp import RECORD as SSP
from ...reference import published
from ..ablation import Variant

KEY = SSP.name
TITLE = "SSP: self-support components"

#: Every switch off: the plain prototype model (SSP's "baseline").
BASELINE_ARGS = {"use_ssfp": False, "use_ssbp": False, "use_asbp": False, "refine": False,
                 "ssl_query": False, "ssl_support": False}
#: Self-support matching (one round) in the forward pass, the loss on its prediction only.
SELF_SUPPORT_ARGS = {"use_ssfp": True, "use_ssbp": True, "use_asbp": True, "refine": False,
                     "ssl_query": False, "ssl_support": False}
#: ... plus the self-support loss (query and support self-matching).
SSL_ARGS = {**SELF_SUPPORT_ARGS, "ssl_query": True, "ssl_support": True}
#: The full method: a second (refinement) round, out_1 supervised too (SSPConfig's defaults).
SSP_ARGS = {**SSL_ARGS, "refine": True, "out1_loss": True}

BASELINE_ROW = "baseline (support prototypes)"
SSP_ROW = "+ refinement = SSP"

SSP_VARIANTS = [
    # --- cumulative: what each component adds
    Variant(BASELINE_ROW, SSP.name, BASELINE_ARGS),
    Variant("+ SSFP (test only)", SSP.name, BASELINE_ARGS, eval_args={"use_ssfp": True}, trained_as=BASELINE_ROW),
    Variant("+ SSBP (test only)", SSP.name, BASELINE_ARGS, eval_args={"use_ssfp": True, "use_ssbp": True},
            trained_as=BASELINE_ROW),
    Variant("+ ASBP (test only)", SSP.name, BASELINE_ARGS,
            eval_args={"use_ssfp": True, "use_ssbp": True, "use_asbp": True}, trained_as=BASELINE_ROW),
    Variant("self-support in training", SSP.name, SELF_SUPPORT_ARGS),
    Variant("+ SSL", SSP.name, SSL_ARGS),
    Variant(SSP_ROW, SSP.name, SSP_ARGS),
    # --- the trained SSP with one component switched off at test
    Variant("SSP, refinement off at test", SSP.name, SSP_ARGS, eval_args={"refine": False}, trained_as=SSP_ROW),
    Variant("SSP, SSFP off at test", SSP.name, SSP_ARGS, eval_args={"use_ssfp": False}, trained_as=SSP_ROW),
    Variant("SSP, ASBP off at test (background: SSBP)", SSP.name, SSP_ARGS, eval_args={"use_asbp": False},
            trained_as=SSP_ROW),
    Variant("SSP, SSBP off at test (background: ASBP)", SSP.name, SSP_ARGS, eval_args={"use_ssbp": False},
            trained_as=SSP_ROW),
    Variant("SSP, self-support off at test", SSP.name, SSP_ARGS,
            eval_args={"use_ssfp": False, "use_ssbp": False, "use_asbp": False}, trained_as=SSP_ROW),
]

#: Each row's reference for the paired difference: the row before it (cumulative part), or SSP.
SSP_REFERENCES = {later.name: earlier.name for earlier, later in zip(SSP_VARIANTS[:6], SSP_VARIANTS[1:7])}
SSP_REFERENCES.update({v.name: SSP_ROW for v in SSP_VARIANTS[7:]})
#: The rows that train (the others reuse their weights).
SSP_TRAINED = [v.name for v in SSP_VARIANTS if v.trained_as is None]


def paper_value(variant: Variant, shot: int) -> str:
    """The paper's number for the baseline and the full model (PASCAL-5i, ResNet-50), or ""."""
    key = {BASELINE_ROW: "baseline_noRefine_R50", SSP_ROW: "SSP_refine_R50"}.get(variant.name)
    return f"{published('SSP')['pascal5i'][f'{key}_{shot}shot']['mean']:.1f}" if key else ""
