"""Human-facing messages: the ``dfcil`` logger and the stderr handler of the command line.

The library reports what it does (run directory, epochs, evaluations, suite runs, warnings)
through the standard :mod:`logging` module, on the ``dfcil`` logger and its children
(``logging.getLogger(__name__)`` in each module). As a library should, it installs no handler
itself: ``import dfcil`` adds only a :class:`logging.NullHandler`, so a program using the Python
API (``dfcil.learn`` etc.) shows nothing until it configures logging, e.g.
``logging.basicConfig(level=logging.INFO)``, and can silence it with
``logging.getLogger("dfcil").setLevel(logging.ERROR)``.

The command line (:func:`dfcil.cli.main`) runs each command inside :func:`console_logging`, which
writes every message of level INFO and above as one line on stderr, prefixed as the messages
always were: ``[suite] <message>`` for the suite's (logger ``dfcil.suite``), ``[dfcil] <message>``
for the others. Machine output (JSON results, ``--status`` tables, ``--dry-run`` commands,
``dfcil methods``) is not a message: the command line prints it to stdout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Name of the library's logger; every module logs to a child of it.
LOGGER_NAME = "dfcil"

#: Line prefixes by logger name (the logger and its children); the others get ``[dfcil]``.
PREFIXES = {"dfcil.suite": "[suite]"}
DEFAULT_PREFIX = "[dfcil]"


def prefix_of(logger_name: str) -> str:
    """The console prefix of messages from ``logger_name``."""
    for name, prefix in PREFIXES.items():
        if logger_name == name or logger_name.startswith(name + "."):
            return prefix
    return DEFAULT_PREFIX


class ConsoleFormatter(logging.Formatter):
    """``<prefix> <message>``; every further line of a multi-line message gets the prefix too."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as prefixed console lines."""
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prefix = prefix_of(record.name)
        return "\n".join(f"{prefix} {line}" for line in text.split("\n"))


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when each record is emitted (a stream redirected or
    captured after the handler was made included), flushing after every record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the current ``sys.stderr``."""
        self.stream = sys.stderr
        super().emit(record)


@contextmanager
def console_logging(level: int = logging.INFO) -> Iterator[logging.Handler]:
    """Show the library's messages of ``level`` and above on stderr while the block runs (what
    the command line does); the ``dfcil`` logger's handlers and level are restored afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = StderrHandler()
    handler.setFormatter(ConsoleFormatter())
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
