"""The main comparison: every method under one recipe and one protocol (README, notebook 06).

Rows are the same :class:`Variant` objects as in the method tables, so their training runs are
shared: the PANet row is the PAR-on run of the PANet table, SSP the full model of the SSP table,
PFENet and MSPF those of the MSPF tables. Every row's reference is the plain prototype model
(ProtoNet: masked average pooling + cosine), so each paired difference is what a method adds to
prototype matching on the same training episodes and test episodes.
"""
from __future__ import annotations

from dataclasses import replace

from ..ablation import Variant
from .mspf import MSPF_FULL, PFENET
from .panet import PANET_VARIANTS
from .ssp import SSP_ROW, SSP_VARIANTS

PROTONET = Variant("ProtoNet (MAP + cosine)", "protonet", {})
# Renamed copies: a run is identified by the method and its arguments, not the row's name.
PANET = replace(next(v for v in PANET_VARIANTS if v.name == "PANet, PAR on"), name="PANet (PAR on)")
SSP = replace(next(v for v in SSP_VARIANTS if v.name == SSP_ROW), name="SSP")
MSPF = replace(MSPF_FULL, name="MSPF")
MSDNET = Variant("MSDNet", "msdnet", {})

MAIN_VARIANTS = [PROTONET, PANET, SSP, PFENET, MSPF, MSDNET]
MAIN_REFERENCES = {v.name: PROTONET.name for v in MAIN_VARIANTS[1:]}
