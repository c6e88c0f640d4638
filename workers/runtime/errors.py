"""The error hierarchy every context specialises (``<Context>Error`` in its errors.py).

- ``RetryableError``: try again later (the runtime backs off and retries, never drops).
- ``PermanentError``: retrying cannot help. Raised for one message, the runtime isolates
  and dead-letters it; raised by a command's domain logic, the command fails with it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class BillstreamError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_problem(self) -> dict[str, Any]:
        problem: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            problem["field"] = self.field
        return problem


class RetryableError(BillstreamError):
    code = "retryable"


class PermanentError(BillstreamError):
    code = "permanent"


class ShuttingDown(Exception):
    """Raised out of a retry loop when the worker stops; the batch is not committed."""


def describe(e: BaseException) -> str:
    """One line naming the error (pydantic errors with every field), for logs and headers."""
    if isinstance(e, ValidationError):  # its first line is only "N validation errors for X"
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()
        )
        return f"{type(e).__name__}: {e.title}: {problems}"[:2000]
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:2000]
