"""Documents' API routes: branding, an invoice's PDF and hosted link, portal sessions
(docs/documents.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
