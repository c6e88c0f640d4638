"""The locales billstream's documents and pages are written in (docs/documents.md)."""

from __future__ import annotations

from typing import Literal

Locale = Literal["en", "id"]
LOCALES: tuple[Locale, ...] = ("en", "id")
