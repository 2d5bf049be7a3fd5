"""Support-query prototype distances (PANet's PAR analysis); now part of :mod:`fsslib.analysis.collect`.

Kept so that ``from fsslib.analysis.prototypes import support_query_distances`` (notebook 04) works.
"""
from .collect import prototype_distances, support_query_distances

__all__ = ["prototype_distances", "support_query_distances"]
