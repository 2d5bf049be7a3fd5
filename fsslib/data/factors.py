"""Factors of a test episode on the synthetic benchmark, read from the generator's per-object records.

Each factor is a property of the data that one paper's mechanism is built for
(``docs/benchmark-v3-plan.md``); splitting an evaluation by it shows where a method helps:

=================  ==============================================================  ===================
factor             value for an episode of class ``c``                             mechanism
=================  ==============================================================  ===================
appearance match   does a support show ``c`` in the query's appearance (palette)?  more shots
scale ratio        log2(query's pixels of ``c`` / mean support pixels of ``c``)    multi-scale priors
photometric        the query's photometric strength ``s``                          self-support (SSP)
hard negative      does the query hold another class in ``c``'s appearance?        priors, learned heads
clutter            background blobs in the query                                   adaptive background
query instance     is ``c`` the query's main object alone, the main object with    main vs distractor
                   small distractor instances of ``c`` beside it, or an object
                   drawn in another class's appearance (a hard negative)?
thin part          does ``c`` have a part 3-6 px wide?                             multi-scale decoders
=================  ==============================================================  ===================

The query's instance of ``c`` is its largest visible object of class ``c``; a support's likewise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

#: ``{factor: (bin edges or None for categorical values, bin labels)}``; a value ``x`` falls in the
#: bin ``i`` with ``edges[i] <= x < edges[i + 1]``.
FACTOR_BINS: dict[str, tuple[tuple[float, ...] | None, tuple[str, ...]]] = {
    "appearance match": (None, ("a support matches", "no support matches")),
    "scale ratio": ((-math.inf, -1.0, 0.0, 1.0, math.inf),
                    ("query < 1/2 support", "1/2-1", "1-2", "query > 2x support")),
    "photometric": ((0.0, 0.1, 0.2, math.inf), ("s < 0.1", "0.1-0.2", "s >= 0.2")),
    "hard negative": (None, ("none", "present")),
    "clutter": ((0, 2, 4, math.inf), ("0-1 blobs", "2-3 blobs", "4-6 blobs")),
    "query instance": (None, ("main object alone", "main + distractor instances", "in another class's appearance")),
    "thin part": (None, ("no", "yes")),
}
FACTORS = tuple(FACTOR_BINS)


def instance(record: Mapping, class_id: int) -> dict:
    """The largest visible object of ``class_id`` in an image's factor record."""
    objects = [o for o in record["objects"] if o["cls"] == class_id and o["pixels"] > 0]
    if not objects:
        raise ValueError(f"image {record['stem']} holds no visible object of class {class_id}")
    return max(objects, key=lambda o: o["pixels"])


def episode_factors(records: Mapping[str, Mapping], query: str, supports: list[str], class_id: int) -> dict[str, str]:
    """The bin of every factor for a 1-way episode (``records``: ``SyntheticSource.factors("val")``)."""
    q = instance(records[query], class_id)
    shots = [instance(records[s], class_id) for s in supports]
    ratio = math.log2(q["pixels"] / float(np.mean([s["pixels"] for s in shots])))
    hard = any(o["cls"] != class_id and o["palette"] == q["palette"] and o["pixels"] > 0
               for o in records[query]["objects"])
    labels = {
        "appearance match": FACTOR_BINS["appearance match"][1][0 if any(s["palette"] == q["palette"] for s in shots)
                                                               else 1],
        "scale ratio": _bin("scale ratio", ratio),
        "photometric": _bin("photometric", records[query]["photometric"]),
        "hard negative": "present" if hard else "none",
        "clutter": _bin("clutter", records[query]["clutter"]),
        "query instance": _instance_bin(records[query], class_id, q),
        "thin part": "yes" if q["thin"] else "no",
    }
    return labels


def _instance_bin(record: Mapping, class_id: int, largest: Mapping) -> str:
    labels = FACTOR_BINS["query instance"][1]
    if largest["role"] == "hard_negative":
        return labels[2]
    distractors = any(o["cls"] == class_id and o["role"] == "distractor" and o["pixels"] > 0 for o in record["objects"])
    return labels[1] if distractors else labels[0]


def _bin(factor: str, value: float) -> str:
    edges, labels = FACTOR_BINS[factor]
    index = int(np.searchsorted(np.asarray(edges), value, side="right")) - 1
    return labels[min(max(index, 0), len(labels) - 1)]
