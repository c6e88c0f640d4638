"""structlog, JSON by default, with ids bound per batch/request through contextvars.

One format for every line: ours go through structlog's processors to its renderer; the
libraries' (aiokafka, faststream, uvicorn, alembic: stdlib ``logging``) go through
structlog's ``ProcessorFormatter`` with the same renderer. Colour only on a terminal.
Library chatter that is not news for an operator (partition assignments, faststream's
"callback ... is being executed") is lowered to DEBUG (``Demote``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class StderrLogger:
    """structlog's ``PrintLogger``, but to whatever ``sys.stderr`` is at each call, not the
    one at configuration: a test that captures output (pytest's ``capfd``) then sees the
    lines of the workers it runs in-process."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdlib counterpart: every record to the current ``sys.stderr``."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# (logger name prefix, message fragment): library lines that are routine, logged at DEBUG
ROUTINE = (
    ("faststream", "assigned to partitions"),
    ("faststream", "is being executed"),
    ("aiokafka", "assigned to partitions"),
)


class Demote(logging.Filter):
    """Lowers the ``ROUTINE`` library lines to DEBUG, then keeps a record only at or above
    ``level`` (a handler's filter runs after its level check, so the level is checked here)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            for prefix, fragment in ROUTINE:
                if record.name.startswith(prefix) and fragment in record.getMessage():
                    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                    break
        return record.levelno >= self.level


# libraries whose records go only to our root handler (faststream adds its own colourised
# stdout/stderr handlers to these): no handlers, propagate, level from the root
LIBRARY_LOGGERS = ("faststream", "faststream.access", "faststream.access.kafka", "uvicorn",
                   "uvicorn.error", "uvicorn.access", "aiokafka", "alembic")  # fmt: skip


def _renderer(fmt: str) -> structlog.typing.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    # plain tracebacks: rich ones (with locals) cost ~0.5 s per logged exception
    return structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
    )


def configure(level: str = "INFO", fmt: str = "json", *, libraries: str | None = None) -> None:
    """``level`` for our lines; ``libraries`` (default: ``level``, at least WARNING) for the
    libraries' lines."""
    renderer = _renderer(fmt)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *args: StderrLogger(),
        cache_logger_on_first_use=True,
    )
    library_level = logging.getLevelName(libraries or level)
    library_level = max(library_level, logging.WARNING) if libraries is None else library_level
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ExtraAdder(allow=()),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(Demote(library_level))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(library_level)
    for name in LIBRARY_LOGGERS:
        quiet(logging.getLogger(name))


def quiet(logger: logging.Logger) -> logging.Logger:
    """``logger`` without handlers of its own, level from the root, through our handler."""
    for old in logger.handlers[:]:
        logger.removeHandler(old)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    return logger


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
