"""Pages a person sees, server-rendered (Jinja2): an invoice's hosted page and the customer
portal (docs/documents.md). No API key: each is reached by a signed, expiring link."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
