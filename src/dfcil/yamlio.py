"""YAML reading that takes numbers as people write them.

PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3``, ``1E5`` and
``2e+4`` are strings there (``1.0e-3`` is a float). Every config, suite and ``--set`` value of
this project goes through :func:`safe_load`, which also reads those as floats (as YAML 1.2 and
JSON do); everything else is PyYAML's ``safe_load``. :func:`load_file` reads a config or suite
file with a one-line :class:`~dfcil.errors.ConfigError` for every way it can be unreadable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dfcil.errors import ConfigError


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


def load_file(path: str | Path, what: str = "config") -> Any:
    """The YAML document of the file ``path`` (``what`` names it in errors: config, suite, recipe).

    One-line :class:`ConfigError` when it cannot be read, is not UTF-8 text (a Latin-1 comment, a
    binary file such as a model given by mistake), is not valid YAML, or is empty (only comments
    or blank lines: an empty config would silently mean the full default protocol)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {error.start}: 0x{raw[error.start]:02x}); "
                          f"a {what} is YAML text saved as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: a binary file, not a YAML {what}")
    try:
        data = safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        raise ConfigError(f"{path}: the {what} is empty (only comments or blank lines)")
    return data
