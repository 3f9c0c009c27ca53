"""Registered methods: one file each, looked up by name.

Another package registers its own methods without editing this one through the entry-point
group ``dfcil.methods``: each entry point names a :class:`Method` subclass (in its
``pyproject.toml``: ``[project.entry-points."dfcil.methods"] mymethod = "mypkg.mine:MyMethod"``),
whose ``name`` it is registered under. A built-in name cannot be taken over, and an entry point
that does not load or is not a Method stops with a one-line error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from dfcil.errors import ConfigError
from dfcil.methods.abd import ABD
from dfcil.methods.base import Batch, Loss, Method, OldModel, Phase, RunEnv, StepResult
from dfcil.methods.deepinversion import DeepInversion
from dfcil.methods.dgr import DGR
from dfcil.methods.ewc import EWC
from dfcil.methods.finetune import Finetune
from dfcil.methods.joint import Joint
from dfcil.methods.lwf import LwF
from dfcil.methods.lwfmc import LwFMC
from dfcil.methods.mas import MAS
from dfcil.methods.mfgr import MFGR
from dfcil.methods.pass_ import PASS
from dfcil.methods.rdfcil import RDFCIL
from dfcil.methods.skd import SKD
from dfcil.schema import from_dict

BUILT_IN: tuple[type[Method], ...] = (Finetune, LwF, Joint, DeepInversion, ABD, RDFCIL, MFGR, SKD, LwFMC, EWC, MAS,
                                       PASS, DGR)
ENTRY_POINT_GROUP = "dfcil.methods"


def _registry() -> dict[str, type[Method]]:
    """The built-in methods, then those of the installed packages' ``dfcil.methods`` entry points."""
    methods: dict[str, type[Method]] = {cls.name: cls for cls in BUILT_IN}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as error:  # noqa: BLE001 - any import failure of a plug-in
            raise ConfigError(f"entry point {ENTRY_POINT_GROUP}:{entry.name} ({entry.value}) does not load: "
                              f"{type(error).__name__}: {error}") from None
        if not (isinstance(cls, type) and issubclass(cls, Method) and isinstance(getattr(cls, "name", None), str)):
            raise ConfigError(f"entry point {ENTRY_POINT_GROUP}:{entry.name} ({entry.value}) is not a dfcil "
                              "Method subclass with a name")
        if cls.name in methods and methods[cls.name] is not cls:
            raise ConfigError(f"entry point {ENTRY_POINT_GROUP}:{entry.name}: the method name {cls.name!r} "
                              "is taken")
        methods[cls.name] = cls
    return methods


METHODS: Mapping[str, type[Method]] = MappingProxyType(_registry())


def method_class(name: str) -> type[Method]:
    """The method registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r} (known: {', '.join(METHODS)})") from None


def resolve_method(section: Mapping[str, Any]) -> tuple[type[Method], Any]:
    """The method a ``method`` config section names and its typed options (an instance of the
    method's ``Options``), validated: a one-line :class:`ConfigError` otherwise."""
    if not isinstance(section, Mapping) or "name" not in section:
        raise ConfigError("method.name: required (run `dfcil methods` for the list)")
    name = section["name"]
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {name!r}")
    cls = method_class(name)
    options = {k: v for k, v in section.items() if k != "name"}
    return cls, from_dict(cls.Options, options, "method")


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
    "resolve_method",
]
