"""Credit notes against finalized invoices: their commands (to be built)."""

from __future__ import annotations

from typing import Any

from workers.invoicing.base import Handler

COMMANDS: dict[type[Any], Handler] = {}
