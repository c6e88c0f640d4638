"""structlog, JSON by default, with ids bound per batch/request through contextvars."""

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


def configure(level: str = "INFO", fmt: str = "json") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # plain tracebacks: rich ones (with locals) cost ~0.5 s per logged exception
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
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
    # libraries (aiokafka, faststream, uvicorn) log through stdlib: keep them quiet but visible
    logging.basicConfig(
        level=max(logging.getLevelName(level), logging.WARNING), handlers=[_StderrHandler()]
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
