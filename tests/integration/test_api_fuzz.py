"""A property-based fuzz run of the whole HTTP API (schemathesis) against the LIVE OpenAPI
document of a running ingress, with a real broker and a real PostgreSQL, authenticated as a
real tenant.

Every operation gets positive cases (valid by the document) and negative ones (invalid by
it). It fails on any 5xx, any status code the document does not list for the operation, and
any response whose content type, headers or body does not match what the document says.
Bounded: a fixed number of examples per operation and mode, no shrinking past that, so it
takes about a minute or two on two cores.
"""

from __future__ import annotations

import asyncio
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
    ]
    auth = {"Authorization": f"Bearer {api_key}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

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
