"""``build_model(name, **config)``: every method by name, its keyword arguments checked."""
from __future__ import annotations

from dataclasses import fields

from .base import FewShotSegmenter
from .protonet import ProtoNet

METHODS: dict[str, type[FewShotSegmenter]] = {"protonet": ProtoNet}


def config_fields(name: str) -> dict[str, object]:
    """The config fields of method ``name`` with their defaults."""
    return {f.name: f.default for f in fields(method_class(name).config_class)}


def method_class(name: str) -> type[FewShotSegmenter]:
    if name not in METHODS:
        raise ValueError(f"unknown model '{name}'; valid names: {sorted(METHODS)}")
    return METHODS[name]


def build_model(name: str, **config) -> FewShotSegmenter:
    """Build method ``name``; its keyword arguments are the fields of its config dataclass."""
    cls = method_class(name)
    valid = config_fields(name)
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for model '{name}'; valid keys: {sorted(valid)}")
    return cls(cls.config_class(**config))
