"""``build_model(name, **config)``: every method by name, its keyword arguments checked.

Methods are imported on first use, so a method file that needs a heavy dependency costs
nothing to the others.
"""
from __future__ import annotations

from dataclasses import fields
from importlib import import_module

from .base import FewShotSegmenter

#: name -> "module:Class" (one file per method, named after it).
METHODS: dict[str, str] = {
    "protonet": "fsslib.models.protonet:ProtoNet",
    "panet": "fsslib.models.panet:PANet",
    "ssp": "fsslib.models.ssp:SSP",
    "pfenet": "fsslib.models.pfenet:PFENet",
    "mspf": "fsslib.models.mspf:MSPF",
    "msdnet": "fsslib.models.msdnet:MSDNet",
}


def method_class(name: str) -> type[FewShotSegmenter]:
    if name not in METHODS:
        raise ValueError(f"unknown model '{name}'; valid names: {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    try:
        return getattr(import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise ValueError(f"model '{name}' is not implemented yet ({module}.py is missing)") from None


def config_fields(name: str) -> dict[str, object]:
    """The config fields of method ``name`` with their defaults."""
    return {f.name: f.default for f in fields(method_class(name).config_class)}


def build_model(name: str, **config) -> FewShotSegmenter:
    """Build method ``name``; its keyword arguments are the fields of its config dataclass."""
    cls = method_class(name)
    valid = config_fields(name)
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for model '{name}'; valid keys: {sorted(valid)}")
    return cls(cls.config_class(**config))
