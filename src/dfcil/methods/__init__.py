"""Registered methods: one file each, looked up by name."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from dfcil.errors import ConfigError
from dfcil.methods.base import Batch, Loss, Method, OldModel, Phase, RunEnv, StepResult
from dfcil.methods.abd import ABD
from dfcil.methods.deepinversion import DeepInversion
from dfcil.methods.finetune import Finetune
from dfcil.methods.joint import Joint
from dfcil.methods.lwf import LwF
from dfcil.methods.mfgr import MFGR
from dfcil.methods.rdfcil import RDFCIL
from dfcil.methods.skd import SKD
from dfcil.schema import from_dict

METHODS: Mapping[str, type[Method]] = MappingProxyType({cls.name: cls for cls in (Finetune, LwF, Joint, DeepInversion, ABD, RDFCIL, MFGR, SKD)})


def method_class(name: str) -> type[Method]:
    """The method registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r} (known: {', '.join(METHODS)})") from None


def parse_method_options(section: Mapping[str, Any]) -> Any:
    """Validate the ``method`` config section and return the method's typed options."""
    if not isinstance(section, Mapping) or "name" not in section:
        raise ConfigError("method.name: required (run `dfcil methods` for the list)")
    name = section["name"]
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {name!r}")
    cls = method_class(name)
    options = {k: v for k, v in section.items() if k != "name"}
    return from_dict(cls.Options, options, "method")


__all__ = [
    "METHODS",
    "Batch",
    "Loss",
    "Method",
    "OldModel",
    "Phase",
    "RunEnv",
    "StepResult",
    "method_class",
    "parse_method_options",
]
