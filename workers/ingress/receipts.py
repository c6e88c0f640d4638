"""The receipts API (docs/receipts.md): a customer's signed, hash-chained receipts, their
export for offline verification, and the tenant's signing keys.

Reads come straight from PostgreSQL (``storage.receipts.ReceiptRepository``), each row
turned into its contract by the receipts face (``receipt_data``, ``export_line``, ``jwks``).
Rotating the signing key publishes a ``RotateReceiptKey`` command on
``billstream.commands.receipts.v1``, keyed by the tenant id (202 + command id; the outcome
names the new ``kid``, the ``retired_kid`` and ``valid_from``).

``/.well-known/billstream/{tenant}/keys.json`` needs no API key: it is how anyone holding
an export verifies it (``billstream receipts verify``). It depends on no tenant, so the door
(workers/ingress/door.py) never asks for one, as for the Stripe webhook.

Routes are declared in match order: ``/v1/receipts/export`` and ``/v1/receipts/keys``
before ``/v1/receipts/{receipt_id}``, which would otherwise capture them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from schemas import topics
from schemas.bounds import EXTERNAL_ID_PATTERN
from schemas.envelope import TENANT_ID_PATTERN
from schemas.receipts import (
    KEY_ID_PATTERN,
    RECEIPT_ID_PATTERN,
    ReceiptData,
    RotateReceiptKey,
    RotationSpec,
)
from storage.receipts import ReceiptRepository, ReceiptRow
from storage.tenants import TenantRepository
from workers import receipts
from workers.ingress.deps import State, Tenant, Unit
from workers.ingress.fields import Text
from workers.ingress.problems import not_found
from workers.ingress.routes import CommandAccepted, envelope, submit

router = APIRouter(tags=["receipts"])

#: receipts per page of an export (each page read in its own short transaction)
EXPORT_PAGE = 500
#: how long anyone may cache a tenant's public keys (a rotation shows within this)
KEYS_MAX_AGE_S = 300
NDJSON = "application/x-ndjson"

ReceiptIdPath = Annotated[
    str, Path(pattern=RECEIPT_ID_PATTERN, description="rct_ + 32 hex digits.")
]
TenantPath = Annotated[str, Path(pattern=TENANT_ID_PATTERN, description="A tenant's id.")]
CustomerQuery = Annotated[
    str, Query(pattern=EXTERNAL_ID_PATTERN, description="The customer's external_id.")
]


class ReceiptPage(BaseModel):
    data: list[ReceiptData]
    has_more: bool = Field(description="Whether the chain goes on past this page.")
    next_after_seq: int | None = Field(
        description="Pass as ?after_seq= for the next page; null on the last page."
    )


class Jwk(BaseModel):
    """One public key (RFC 7517, RFC 8037) and when it signed: receipts issued at or after
    ``not_before`` and, once it was rotated out, before ``not_after``."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(description="The raw public key, base64url without padding.")
    kid: str = Field(pattern=KEY_ID_PATTERN, description="RFC 7638 thumbprint.")
    alg: Literal["EdDSA"]
    use: Literal["sig"]
    not_before: datetime
    not_after: datetime | None = Field(description="Null while it is the current key.")


class Jwks(BaseModel):
    keys: list[Jwk] = Field(description="Current and past keys, oldest first.")


class RotateKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text | None = Field(
        default=None,
        max_length=500,  # as RotationSpec's
        description="Why (kept with the command, for the record).",
    )


def filename(customer: str) -> str:
    """``receipts-<customer>.jsonl``, the customer's id reduced to characters safe in a
    file name on any system (and in a quoted header parameter)."""
    return "receipts-" + re.sub(r"[^A-Za-z0-9._-]", "_", customer) + ".jsonl"


# --- receipts ------------------------------------------------------------------------


@router.get("/v1/receipts", response_model=ReceiptPage, summary="A customer's receipts, in order")
async def list_receipts(
    tx: Unit,
    tenant_id: Tenant,
    customer: CustomerQuery,
    after_seq: Annotated[
        int, Query(ge=0, le=2**62, description="The last seq of the previous page (0: from 1).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ReceiptPage:
    """The customer's chain by ``seq`` (1, 2, 3, …), ``limit`` per page. A customer with no
    receipts — none issued yet, or no such customer — has an empty chain: an empty page,
    never a 404 (receipts know customers only by the documents they attest)."""
    rows = await tx.repo(ReceiptRepository).page(
        tenant_id, customer, after_seq=after_seq, limit=limit + 1
    )  # one more tells whether there is a next page
    page, more = rows[:limit], len(rows) > limit
    return ReceiptPage(
        data=[receipts.receipt_data(r) for r in page],
        has_more=more,
        next_after_seq=page[-1].seq if more else None,
    )


class NdjsonResponse(StreamingResponse):
    media_type = NDJSON


@router.get(
    "/v1/receipts/export",
    response_class=NdjsonResponse,
    summary="A customer's whole chain as JSON lines, to verify offline",
    responses={
        200: {
            "description": "One receipt (as GET /v1/receipts/{receipt_id} shows it) per line, "
            "by seq; empty for a customer with no receipts",
            "content": {NDJSON: {"schema": {"type": "string"}}},
            "headers": {
                "Content-Disposition": {
                    "required": True,
                    "description": 'attachment; filename="receipts-<customer>.jsonl"',
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
async def export_receipts(
    st: State, tx: Unit, tenant_id: Tenant, customer: CustomerQuery
) -> StreamingResponse:
    """Verify it with the tenant's keys (``/.well-known/billstream/{tenant}/keys.json``):
    ``billstream receipts verify``. The answer streams a page of receipts at a time, each
    page read in its own short transaction; the first is read before the answer starts
    (PostgreSQL down: 503). A failure after that cuts the connection: the last line is
    incomplete and the verifier says so. Receipts issued while the export runs may be
    included (a chain only grows at its end)."""
    repo = tx.repo(ReceiptRepository)
    first = await repo.page(tenant_id, customer, limit=EXPORT_PAGE)

    async def lines() -> AsyncIterator[str]:
        rows = first
        while rows:
            yield "".join(receipts.export_line(r) for r in rows)
            if len(rows) < EXPORT_PAGE:
                return
            rows = await _page(st, tenant_id, customer, rows[-1].seq)

    disposition = f'attachment; filename="{filename(customer)}"'
    return NdjsonResponse(lines(), headers={"Content-Disposition": disposition})


async def _page(st: State, tenant_id: str, customer: str, after_seq: int) -> list[ReceiptRow]:
    async with st.jobs.transaction("ingress") as tx:
        return await tx.repo(ReceiptRepository).page(
            tenant_id, customer, after_seq=after_seq, limit=EXPORT_PAGE
        )


# --- keys ----------------------------------------------------------------------------


@router.get(
    "/v1/receipts/keys",
    response_model=Jwks,
    summary="The tenant's receipt signing keys, current and past (JWKS)",
)
async def get_keys(tx: Unit, tenant_id: Tenant) -> Response:
    """The same document as ``/.well-known/billstream/{tenant}/keys.json``. ``{"keys": []}``
    until the first receipt (or rotation) creates the first key."""
    return JSONResponse(receipts.jwks(await tx.repo(ReceiptRepository).keys(tenant_id)))


@router.post(
    "/v1/receipts/keys/rotate",
    status_code=202,
    response_model=CommandAccepted,
    summary="Rotate the receipt signing key (command)",
)
async def rotate_key(
    request: Request,
    st: State,
    tenant_id: Tenant,
    body: Annotated[RotateKeyIn | None, Body()] = None,
) -> Response:
    """Publishes a ``RotateReceiptKey`` command: the current key stops signing (its
    ``not_after`` is set) and a new key signs every receipt from that instant on. Past keys
    stay published, so receipts they signed still verify. The outcome's ``result`` has the
    new ``kid``, the ``retired_kid`` (null if there was no key yet) and ``valid_from``."""
    spec = RotationSpec(reason=(body or RotateKeyIn()).reason)
    command = RotateReceiptKey(data=spec, **envelope(request, tenant_id, "receipt_keys"))
    return await submit(
        request,
        st,
        tenant_id,
        command,
        topic=topics.COMMANDS_RECEIPTS,
        key=topics.partition_key(tenant_id),
    )


@router.get(
    "/.well-known/billstream/{tenant}/keys.json",
    response_model=Jwks,
    summary="A tenant's public receipt keys (JWKS), for anyone verifying receipts; no API key",
    responses={
        200: {
            "description": "The tenant's keys, current and past",
            "headers": {
                "Cache-Control": {
                    "required": True,
                    "description": f"public, max-age={KEYS_MAX_AGE_S}",
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
async def well_known_keys(tenant: TenantPath, tx: Unit) -> Response:
    """Needs no authentication. 404 for an unknown tenant; ``{"keys": []}`` for a tenant
    that has no key yet (none is created before its first receipt). May be cached for
    five minutes: a verifier that meets an unknown ``kid`` should fetch it again."""
    if not await tx.repo(TenantRepository).exists(tenant):
        raise not_found("tenant", tenant)
    keys = receipts.jwks(await tx.repo(ReceiptRepository).keys(tenant))
    return JSONResponse(keys, headers={"Cache-Control": f"public, max-age={KEYS_MAX_AGE_S}"})


# --- one receipt (last: its path would capture /export and /keys) ---------------------


@router.get("/v1/receipts/{receipt_id}", response_model=ReceiptData, summary="One receipt")
async def get_receipt(receipt_id: ReceiptIdPath, tx: Unit, tenant_id: Tenant) -> ReceiptData:
    """404 unless the receipt is the tenant's (an invoice or credit note names its receipt
    as soon as it is final; the receipt itself follows within moments)."""
    row = await tx.repo(ReceiptRepository).get(tenant_id, receipt_id)
    if row is None:
        raise not_found("receipt", receipt_id)
    return receipts.receipt_data(row)
