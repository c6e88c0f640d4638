"""How long operations report progress (the CLI draws it with rich; tests ignore it)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def begin(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    def begin(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass
