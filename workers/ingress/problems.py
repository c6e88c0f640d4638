"""RFC 9457 problem details (``application/problem+json``) for every error, and which
errors mean a dependency is down (answered 503 by the door, workers/ingress/door.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.runtime.transient import is_transient

PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger("billstream.ingress")

DEPENDENCY_RETRY_AFTER_S = 5


class Problem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = list(errors) if errors else None
        self.headers = headers or {}

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:billstream:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "instance": instance,
        }
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = self.errors
        return body


def not_found(what: str, id: str, hint: str = "") -> Problem:
    """404 for an unknown resource: ``No such <what>`` / ``no <what> '<id>'<hint>``."""
    return Problem(404, "not_found", f"No such {what}", f"no {what} {id!r}{hint}")


def invalid(detail: str, errors: Sequence[dict[str, Any]]) -> Problem:
    """422: the request is not valid; ``errors`` name each field and why."""
    return Problem(422, "validation", "The request is not valid", detail, errors=errors)


def dependency_down(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is transient
    (``is_transient``): a failed rollback on a dropped connection hides the real cause."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if is_transient(e):
            return True
        todo += [e.__cause__, e.__context__]
    return False


def unavailable(exc: BaseException) -> Problem:
    """503 for a dependency that is down (PostgreSQL here; the publisher answers the
    broker's own)."""
    return Problem(
        503,
        "dependency_unavailable",
        "A dependency is unavailable",
        f"the database or the broker did not answer ({type(exc).__name__}); nothing was "
        "accepted. Retry the request.",
        headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_S)},
    )


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    return JSONResponse(
        problem.body(request.url.path),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


def field_path(loc: Sequence[str | int], prefix: str = "") -> str:
    """``("body", "group_by", "model")`` → ``group_by.model``; list indexes as ``[3]``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + part
    return path


def validation_errors(errors: Sequence[Any], prefix: str = "") -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [p for p in e["loc"] if p not in ("body", "query", "path", "header")]
        out.append({"field": field_path(loc, prefix) or prefix or "body", "reason": e["msg"]})
    return out


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc, request)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
    return problem_response(
        Problem(422, "validation", "The request is not valid", detail, errors=errors), request
    )


async def _on_model_validation(request: Request, exc: Exception) -> JSONResponse:
    """A command built from a request that passed the route's own validation still refused
    by the command's model (stricter bounds): 422 naming the field, nothing published."""
    assert isinstance(exc, ValidationError)
    errors = validation_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
    return problem_response(
        Problem(422, "validation", "The request is not valid", detail, errors=errors), request
    )


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {400: "Malformed JSON", 404: "Not found", 405: "Method not allowed"}
    # FastAPI raises 400 only when a body does not parse
    code = "malformed_json" if exc.status_code == 400 else "http"
    return problem_response(
        Problem(
            exc.status_code,
            code,
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        ),
        request,
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(
        Problem(500, "internal", "Internal error", "the error is logged; nothing was accepted"),
        request,
    )


HANDLERS = {
    Exception: _on_unexpected,
    Problem: _on_problem,
    RequestValidationError: _on_validation,
    ValidationError: _on_model_validation,
    StarletteHTTPException: _on_http,
}
