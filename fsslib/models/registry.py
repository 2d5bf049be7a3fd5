"""The methods: one module per method, each ending with its :class:`~fsslib.models.record.MethodRecord`.

``build_model(name, **config)`` builds any of them with its keyword arguments checked;
:func:`records` gives every record in the tables' order. Method modules are imported on first
use, so a method file that needs a heavy dependency costs nothing to the others.
"""
from __future__ import annotations

from dataclasses import fields
from importlib import import_module

from .base import FewShotSegmenter
from .record import MethodRecord

#: name -> its module (one file per method, named after it), in the order of the tables.
METHOD_MODULES: dict[str, str] = {
    "protonet": "fsslib.models.protonet",
    "panet": "fsslib.models.panet",
    "ssp": "fsslib.models.ssp",
    "pfenet": "fsslib.models.pfenet",
    "mspf": "fsslib.models.mspf",
    "msdnet": "fsslib.models.msdnet",
    "finetune": "fsslib.models.finetune",
    "fomaml": "fsslib.models.fomaml",
    "dinov2-proto": "fsslib.models.dinov2_proto",
}
METHODS = tuple(METHOD_MODULES)
#: The plain prototype model: every table's reference, and what ``train`` builds when not told.
REFERENCE_METHOD = METHODS[0]


def method_record(name: str) -> MethodRecord:
    if name not in METHOD_MODULES:
        raise ValueError(f"unknown model '{name}'; valid names: {sorted(METHOD_MODULES)}")
    try:
        return import_module(METHOD_MODULES[name]).RECORD
    except ModuleNotFoundError as e:
        if e.name != METHOD_MODULES[name]:
            raise
        raise ValueError(f"model '{name}' is not implemented yet ({METHOD_MODULES[name]}.py is missing)") from None


def records() -> list[MethodRecord]:
    """Every method's record, in the order of the tables."""
    return [method_record(name) for name in METHOD_MODULES]


def method_class(name: str) -> type[FewShotSegmenter]:
    return method_record(name).model_class


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
