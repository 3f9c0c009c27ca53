"""YAML reading that takes numbers as people write them.

PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3``, ``1E5`` and
``2e+4`` are strings there (``1.0e-3`` is a float). Every config, suite and ``--set`` value of
this project goes through :func:`safe_load`, which also reads those as floats (as YAML 1.2 and
JSON do); everything else is PyYAML's ``safe_load``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus YAML 1.2 floats without a dot or with an unsigned exponent."""


# appended after PyYAML's own resolvers, so integers (10, 0x1F) and YAML 1.1 floats resolve as before
NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse ``text`` like ``yaml.safe_load``, with ``1e-3``-style numbers read as floats."""
    return yaml.load(text, Loader=NumberLoader)  # noqa: S506 - a SafeLoader subclass
