"""Messages go through `logging`: silent by default in the Python API, `[dfcil] ...` lines on the
command line's stderr."""

from __future__ import annotations

import logging

import dfcil
from dfcil.console import LOGGER_NAME, console_logging
from dfcil.workflow.folder import Skipped, report_skipped


def test_importing_the_library_installs_only_a_null_handler():
    assert dfcil.__version__
    handlers = logging.getLogger(LOGGER_NAME).handlers
    assert handlers and all(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_the_python_api_is_silent_until_logging_is_configured(capsys, caplog):
    report_skipped([Skipped("a.jpg", "cannot decode image a.jpg: truncated")])
    assert capsys.readouterr().err == ""  # no handler of the library's own
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):  # what a program's own handler gets
        report_skipped([Skipped("a.jpg", "cannot decode image a.jpg: truncated")])
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("dfcil.workflow.folder", logging.WARNING, "skipped 1 unreadable file(s):"),
        ("dfcil.workflow.folder", logging.WARNING, "  cannot decode image a.jpg: truncated"),
    ]
    logging.getLogger(LOGGER_NAME).setLevel(logging.ERROR)  # silenced by its user
    try:
        caplog.clear()
        report_skipped([Skipped("a.jpg", "x")])
        assert caplog.records == []
    finally:
        logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)


def test_the_command_line_handler_writes_prefixed_lines_to_stderr_and_is_removed_after(capsys):
    before = list(logging.getLogger(LOGGER_NAME).handlers)
    with console_logging():
        logging.getLogger("dfcil.run").info("run directory %s", "runs/x")
        logging.getLogger("dfcil.suite").info("start %s", "seed-0")
        logging.getLogger("dfcil.runlock").warning("warning: cannot lock %s", "x/.lock")
        logging.getLogger("dfcil.engine.trainer").debug("not shown")
        logging.getLogger("dfcil.x").info("two\nlines")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["[dfcil] run directory runs/x", "[suite] start seed-0",
                                         "[dfcil] warning: cannot lock x/.lock", "[dfcil] two", "[dfcil] lines"]
    assert logging.getLogger(LOGGER_NAME).handlers == before
    assert logging.getLogger(LOGGER_NAME).level == logging.NOTSET
    logging.getLogger("dfcil.run").info("after the command")
    assert capsys.readouterr().err == ""
