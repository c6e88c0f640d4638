"""The OpenAPI document, made to tell the truth about every answer the door and the routes give.

FastAPI documents the success response and a 422 it does not send (its own validation
error shape). This rewrites each operation's responses from what the service can answer:

- every operation: 422 (a path or query parameter is not valid; control characters) and
  503 (PostgreSQL or the broker unavailable, ``Retry-After``);
- operations that need an API key: 401 (with ``security``: bearer);
- operations that read a body or honour ``Idempotency-Key``: 400 (malformed JSON, JSON
  nested too deeply, a bad ``Idempotency-Key``) and 413 (body too large, too many items);
- operations with a path parameter, a ``customer`` filter, or a body naming a resource the
  door looks up (``BODY_LOOKUPS``): 404;
- writes that honour ``Idempotency-Key``: 409 (a request with the same key in progress);
- the ingest endpoints: 429 (the tenant's rate limit, ``Retry-After``).

Every error is ``application/problem+json`` (RFC 9457); the ``type`` of each status is
one of the values listed in its schema (``urn:billstream:problem:<code>``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from workers.ingress.door import needs_tenant
from workers.ingress.fields import NO_CONTROL_CHARACTERS

URN = "urn:billstream:problem:"

#: status → (title, problem codes the service can answer with it)
PROBLEM_TYPES: dict[int, tuple[str, list[str]]] = {
    400: (
        "Malformed request",
        [
            "malformed_json",
            "json_too_deep",
            "idempotency_key",
            "invalid_signature",
            "invalid_event",
        ],
    ),
    401: ("No or a bad API key", ["unauthorized"]),
    404: ("No such resource", ["not_found", "unknown_pos_source", "http"]),
    409: (
        "A request with this Idempotency-Key is in progress, or the resource's state refuses "
        "it (an invoice that cannot take payments)",
        ["idempotency_in_progress", "invoice_not_payable", "invoice_not_finalized"],
    ),
    413: (
        "Too large",
        ["too_large", "too_many_events", "too_many_receipts", "event_too_large"],
    ),
    422: ("Not valid", ["validation", "idempotency_key_reused"]),
    429: ("Rate limited", ["rate_limited"]),
    503: (
        "A dependency is unavailable",
        [
            "dependency_unavailable",
            "broker_unavailable",
            "secrets_key_missing",
            "signing_key_unavailable",
            "document_pending",
        ],
    ),
}

RATE_LIMITED = {("POST", "/v1/events"), ("POST", "/v1/integrations/pos/{source}/transactions")}
UNAUTHENTICATED_WEBHOOK = ("POST", "/v1/integrations/stripe/{token}")
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# writes that change nothing, so take no Idempotency-Key (each call answers anew)
NOT_IDEMPOTENT = {
    ("POST", "/v1/customers/{customer}/entitlements/token"),
    ("POST", "/v1/invoices/{invoice_id}/hosted-link"),
    ("POST", "/v1/portal/sessions"),
}
# writes whose body names a resource the door looks up (an unknown customer: 404)
BODY_LOOKUPS = {("POST", "/v1/invoices"), ("POST", "/v1/portal/sessions")}
# reads and links of a finalized invoice: a draft is 409 (invoice_not_finalized)
FINALIZED_ONLY = {
    ("GET", "/v1/invoices/{invoice_id}/pdf"),
    ("POST", "/v1/invoices/{invoice_id}/hosted-link"),
}

_PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": f"{URN}<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request path."},
        "errors": {
            "type": "array",
            "description": "Each field that is not valid, and why.",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {
                    "field": {"type": "string", "description": "e.g. events[3].time"},
                    "reason": {"type": "string"},
                    "index": {"type": "integer", "description": "The item of a batch."},
                },
            },
        },
    },
}


def _problem_schema(status: int) -> dict[str, Any]:
    schema = copy.deepcopy(_PROBLEM)
    codes = PROBLEM_TYPES[status][1]
    schema["properties"]["type"] = {"type": "string", "enum": [URN + c for c in codes]}
    schema["properties"]["status"] = {"type": "integer", "enum": [status]}
    return schema


def _problem_response(status: int) -> dict[str, Any]:
    title, codes = PROBLEM_TYPES[status]
    response: dict[str, Any] = {
        "description": f"{title}: " + ", ".join(f"`{URN}{c}`" for c in codes),
        "content": {
            "application/problem+json": {
                "schema": {"$ref": f"#/components/schemas/Problem{status}"}
            }
        },
    }
    if status in (409, 429, 503):
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
        }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A repeat with the same key gets the first response (24 h by default); "
    "the same key with another request 422; while the first is in progress 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _events_body(components: dict[str, Any], max_items: int) -> dict[str, Any]:
    from schemas.usage import UsageEventIn

    schema = TypeAdapter(UsageEventIn).json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components["UsageEventIn"] = schema
    item = {"$ref": "#/components/schemas/UsageEventIn"}
    batch = {"type": "array", "items": item, "minItems": 1, "maxItems": max_items}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"events": batch},
                    "required": ["events"],
                    "additionalProperties": False,
                }
            },
            "application/cloudevents-batch+json": {"schema": batch},
            "application/cloudevents+json": {"schema": item},
        },
    }


def _statuses(route: APIRoute, method: str, op: dict[str, Any], auth: bool) -> set[int]:
    statuses = {422, 503}
    key = (method, route.path_format)
    idempotent = auth and method in WRITE_METHODS and key not in NOT_IDEMPOTENT
    if auth:
        statuses.add(401)
    if "requestBody" in op or idempotent or key == UNAUTHENTICATED_WEBHOOK:
        statuses |= {400, 413}
    params = op.get("parameters", [])
    if any(p["in"] == "path" for p in params) or any(p["name"] == "customer" for p in params):
        statuses.add(404)
    if key in BODY_LOOKUPS:
        statuses.add(404)
    if idempotent or key in FINALIZED_ONLY:
        statuses.add(409)
    if key in RATE_LIMITED:
        statuses.add(429)
    return statuses


def _no_control_characters(schema: dict[str, Any]) -> None:
    """Say what the door refuses: a string parameter holds no control character."""
    if schema.get("type") == "string" and not {"pattern", "enum", "format"} & set(schema):
        schema["pattern"] = NO_CONTROL_CHARACTERS
    for alt in schema.get("anyOf", []):
        _no_control_characters(alt)
    if isinstance(schema.get("items"), dict):
        _no_control_characters(schema["items"])


def truthful_openapi(
    app: FastAPI, routes: list[APIRoute], max_batch_events: int
) -> Callable[[], dict[str, Any]]:
    from workers.ingress.deps import tenant

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Problem"] = copy.deepcopy(_PROBLEM)
        for status in PROBLEM_TYPES:
            schemas[f"Problem{status}"] = _problem_schema(status)
        components["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "A tenant API key (`billstream tenant create`).",
            }
        }
        for route in routes:
            if not route.include_in_schema:
                continue
            auth = needs_tenant(route.dependant, tenant)
            for method in route.methods or ():
                op = doc["paths"][route.path_format].get(method.lower())
                if op is None:
                    continue
                if (method, route.path_format) == ("POST", "/v1/events"):
                    op["requestBody"] = _events_body(schemas, max_batch_events)
                params = op.setdefault("parameters", [])
                for p in params:
                    _no_control_characters(p.get("schema", {}))
                if auth:
                    op["security"] = [{"bearerAuth": []}]
                    if (
                        method in WRITE_METHODS
                        and (method, route.path_format) not in NOT_IDEMPOTENT
                    ):
                        params.append(copy.deepcopy(IDEMPOTENCY_KEY))
                if not params:
                    del op["parameters"]
                responses = op["responses"]
                responses.pop("422", None)
                for status in sorted(_statuses(route, method, op, auth)):
                    responses[str(status)] = _problem_response(status)
        app.openapi_schema = doc
        return doc

    return openapi


def problem_types() -> list[str]:
    """Every problem type the service can answer (documentation, tests)."""
    return sorted({URN + c for _, codes in PROBLEM_TYPES.values() for c in codes})
