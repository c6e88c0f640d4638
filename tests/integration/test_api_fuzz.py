"""A property-based fuzz run of the whole HTTP API (schemathesis) against the LIVE OpenAPI
document of a running ingress, with a real broker and a real PostgreSQL, authenticated as a
real tenant.

Every operation gets positive cases (valid by the document) and negative ones (invalid by
it). It fails on any 5xx, any status code the document does not list for the operation, any
response whose content type, headers or body does not match what the document says, and any
positive case the service refuses (400, 413, 422: the document promised it was valid) but
the few listed in ``UNSAYABLE``.
Bounded: a fixed number of examples per operation and mode, no shrinking past that, so it
takes about a minute or two on two cores.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from tests.conftest import TenantKey
from tests.integration.http import ingress
from workers.payments import secrets
from workers.settings import Settings

EXAMPLES_PER_OPERATION = 12

URN = "urn:billstream:problem:"

#: Requests valid by the document that the service refuses for a reason JSON Schema cannot
#: state: operation → the fields its refusal may name. Each must still be a 422 that names
#: only such fields; any other refusal of a valid request fails the run.
UNSAYABLE: dict[str, str] = {
    # usage data is checked all the way down (keys of nested objects; numbers, and strings
    # that spell numbers, at most 10**15 with 12 decimal places): a recursive rule, and a
    # number's decimal places, that the document only states at the top
    "POST /v1/events": r"(events\[\d+\]\.)?data",
    # the URL's host must resolve (DNS) to public addresses only, and be spelled as a
    # hostname or a plain address: decided on registration, not by a schema
    "POST /v1/webhooks/endpoints": r"url",
    "PATCH /v1/webhooks/endpoints/{endpoint_id}": r"url",
    # a cursor continues the page it came from: only one the service wrote is valid
    "GET /v1/alerts": r"cursor",
    # a period: from before to, at most 368 days apart (a rule across two parameters)
    "GET /v1/tax/report": r"to",
    # a feature's configuration is plain JSON (integers within ±2**53, no NUL), at most 8
    # levels and 4,096 bytes: a recursive rule and a size the document cannot state
    "PUT /v1/plans/{plan}/entitlements": r"entitlements\[\d+\]\.config",
    "PUT /v1/customers/{customer}/entitlements/{feature}/override": r"config",
    # a metered feature names its meter, and only a metered one (a rule across two fields)
    "POST /v1/features": r"meter",
    # the rate-limit feature must be one of the tenant's config features (decided by state)
    "PUT /v1/entitlements/config": r"rate_limit_feature",
    # a logo is a data URL of a PNG or JPEG whose bytes (at most 256 KiB) are that image's
    "PUT /v1/branding": r"logo",
    # a statement is for a month that has ended (decided by the clock)
    "POST /v1/partners/{partner_id}/statements": r"period",
    # a ledger's window: from before to (a rule across two parameters)
    "GET /v1/partners/{partner_id}/commissions": r"to",
    # a subtree's usage: subtree=true with exactly one subject (a rule across two parameters)
    "GET /v1/meters/{key}/usage": r"subject|subtree",
    # a subtree's invoices: subtree=true with a customer (a rule across two parameters)
    "GET /v1/invoices": r"customer|subtree",
}

#: The same, in any operation, by the reason the 422 gives for the field.
UNSAYABLE_REASONS = (
    # an exact decimal (a price, a quantity, a rate, a threshold) sent as a JSON number with
    # a fraction part: JSON Schema calls 2.0 an integer, but it was read as a binary float,
    # perhaps rounded; the service asks for a string or a plain integer
    "must be a string or an integer, not a float",
    # a pattern's dialect: the generator reads a document's patterns as ECMA-262, whose
    # \s and \w are not the service's (Python and Rust regex: e.g. U+0085 is a space there)
    "String should match pattern",
    # the value of a decimal written as a string ("0", "1e3" is refused, "12.5"): a schema
    # states a string's pattern, not the range or the decimal places of the number it spells
    "must be > 0 (or null for the last, unbounded tier)",
    "must be >= 0, got",
    "decimal places, got",
    "must be below 10**",
    # rules across the items of an array, or across fields, that a schema cannot state
    "only the last tier may be unbounded",  # tiers: bounds ascend, the last one open
    "the last tier must be unbounded",
    "must be greater than tier",
    "duplicate price key",
    "is credited twice",  # a credit note names each invoice line once (1 and 1.0 alike)
    "minor units; at most",  # a plan's money, in minor units of the plan's own currency
    "the fixed charges (flat amounts, tier flat fees, minimum spends) add up to",
    "is not the sum of the lines'",  # a POS receipt's total and tax
    "the net amount (total - tax)",
    "must be a whole hour",  # in UTC, whatever the offset it is written with
    "thresholds must be distinct",  # as numbers: "1" and "1.0" are the same threshold
    "'trial_end' must be after 'start'",  # a subscription's trial (start: default now)
    "must be after effective_from",  # a tax rate's window
    # a one-off invoice's line: a quantity more than 0 (a string's value), a period given
    # whole and in order
    "must be more than 0",
    "give both 'period_start' and 'period_end', or neither",
    "'period_end' must not be before 'period_start'",
)


def valid_requests_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive-data-acceptance check, with the ``UNSAYABLE`` refusals and the
    reuse of an ``Idempotency-Key`` excused."""
    from schemathesis import checks

    try:
        checks.positive_data_acceptance(ctx, response, case)
        return None
    except AssertionError:
        if _excused(case.operation.label, response):
            return None
        # the answer and the request, to see why (schemathesis's message shows neither)
        raise AssertionError(
            f"a request valid by the document was refused: {response.status_code} "
            f"{response.text[:400]}\n{case.as_curl_command()}"
        ) from None


def _excused(label: str, response: Any) -> bool:
    if response.status_code != 422:
        return False
    problem = response.json()
    if problem.get("type") == URN + "idempotency_key_reused":
        # the generator draws the same few keys for different requests; the service
        # remembers the first (state, like the 409 of a key in progress)
        return True
    fields = UNSAYABLE.get(label)
    errors = problem.get("errors") or []

    def unsayable(error: dict[str, Any]) -> bool:
        if fields is not None and re.fullmatch(fields, str(error.get("field", ""))):
            return True
        return any(reason in str(error.get("reason", "")) for reason in UNSAYABLE_REASONS)

    return (
        problem.get("type") == URN + "validation" and bool(errors) and all(map(unsayable, errors))
    )


def fuzz(openapi: dict[str, Any], base: str, api_key: str) -> list[str]:
    """Run every operation in both modes; the failures, one line each (empty when green)."""
    from schemathesis import checks
    from schemathesis.core.result import Ok
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(openapi)
    wanted = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
        valid_requests_accepted,  # positive cases only: it passes negative ones by
    ]
    auth = {"Authorization": f"Bearer {api_key}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        spec = openapi["paths"][operation.path][operation.method.lower()]
        modes = [GenerationMode.POSITIVE]
        if {"parameters", "requestBody", "security"} & set(spec):
            modes.append(GenerationMode.NEGATIVE)  # else no request is invalid by the document
        for mode in modes:

            @hypothesis_settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                response = case.call(base_url=base, headers=auth, timeout=30)
                case.validate_response(response, checks=wanted)

            try:
                run()
            except (Exception, BaseExceptionGroup) as e:  # one run shows every remaining bug
                failures.append(f"{operation.label} [{mode.value}]: {_summary(e)}")
    return failures


def _summary(e: BaseException) -> str:
    """The failures of one operation, a few lines each, with the request to reproduce."""
    errors = list(e.exceptions) if isinstance(e, BaseExceptionGroup) else [e]
    lines: list[str] = []
    for err in errors[:5]:
        text = [line.strip() for line in str(err).splitlines() if line.strip()]
        curl = [line for line in text if line.startswith("curl ")]
        lines.append(" / ".join(text[:6] + curl[:1]))
    return "\n    ".join(lines)


@pytest.mark.slow
async def test_the_api_keeps_every_promise_of_its_openapi_document(
    settings: Settings, tenant: TenantKey
) -> None:
    # with a secrets key, as in production: Stripe settings are really encrypted and published
    configured = settings.model_copy(update={"secrets_key": SecretStr(secrets.new_key())})
    async with ingress(configured) as base, httpx.AsyncClient(base_url=base) as client:
        openapi = (await client.get("/openapi.json")).json()
        started = time.monotonic()
        failures = await asyncio.to_thread(fuzz, openapi, base, tenant.api_key)
        elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} operations failed ({elapsed:.0f} s):\n" + "\n".join(
        failures
    )
