"""Entitlements: features, what plans, overrides and grants give of them, access that
follows payments and usage, and signed entitlement tokens (docs/entitlements.md).

Its face: what other packages may import (an import-linter contract enforces it) — the one
function a check is answered with and what a token is made of."""

from workers.entitlements.service import entitled, evaluate, token_claims
from workers.entitlements.tokens import (
    PUBLISHED_AFTER_RETIRED,
    SIGNS_AFTER,
    Signer,
    jwks,
    rotate,
    signer,
)

__all__ = [
    "PUBLISHED_AFTER_RETIRED",
    "SIGNS_AFTER",
    "Signer",
    "entitled",
    "evaluate",
    "jwks",
    "rotate",
    "signer",
    "token_claims",
]
