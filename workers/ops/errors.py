"""Errors the operations commands report to the operator."""

from __future__ import annotations


class OpsError(Exception):
    """A refusal or failure to report as ``error: <message>`` and a non-zero exit code.

    ``option`` names the command-line option (or setting) at fault, when one is;
    ``exit_code`` is 2 for a bad invocation, 1 when the operation could not be done."""

    def __init__(self, message: str, *, option: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.option = option
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.option}: {self.message}" if self.option else self.message


class UsageError(OpsError):
    """The command line is wrong (exit code 2)."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message, option=option, exit_code=2)


def database_failed(e: BaseException) -> bool:
    """Whether ``e`` means PostgreSQL failed: the network (``OSError``) or any of SQLAlchemy's
    errors (``DatabaseError``, re-exported by the runtime: ops never imports SQLAlchemy).
    Imported here, not at the top: every command imports this module, and ``--help`` should
    not wait for the runtime."""
    from workers.runtime.database import DatabaseError

    return isinstance(e, OSError | DatabaseError)
