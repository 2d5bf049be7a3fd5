"""The papers' published numbers, as data with their sources, for side-by-side tables.

``published_results.json`` gathers numbers read from the papers (the seeds of this project), the
authors' repositories and maintainers' statements; every entry names its source. They were
measured on PASCAL-5i / COCO-20i with ImageNet backbones, so next to synthetic-benchmark numbers
they show *trends* (does a component help?), never comparable values.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

PATH = Path(__file__).with_name("published_results.json")


@lru_cache(maxsize=1)
def published_results() -> dict:
    """The whole table: ``{method: {"source": ..., setting: numbers}}``."""
    return json.loads(PATH.read_text())


def published(method_prefix: str) -> dict:
    """The entry whose method name starts with ``method_prefix`` (e.g. ``"PANet"``, ``"SSP"``)."""
    matches = [k for k in published_results() if k.startswith(method_prefix)]
    if len(matches) != 1:
        names = [k for k in published_results() if not k.startswith("_")]
        raise KeyError(f"{method_prefix!r} matches {matches or 'nothing'}; methods: {names}")
    return published_results()[matches[0]]
