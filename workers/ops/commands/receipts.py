"""``billstream receipts verify|export|keys|audit``: options → ``workers.ops.receipts`` →
a summary on stdout (docs/receipts.md).

Exit codes: ``verify`` 0 every receipt verified, 1 one failed (the first is printed), 2 the
export or the keys cannot be used; ``audit`` 0 clean, 1 a problem found; ``export`` and
``keys`` 0 written, 1 refused (``error: <option>: <why>``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TextIO, TypeVar

import typer

from workers.ops.commands import console

receipts_app = typer.Typer(
    help="Signed, hash-chained receipts: verify an export offline, export a chain or the "
    "keys, audit a tenant's chains.",
    no_args_is_help=True,
)

T = TypeVar("T")


def _unusable(message: str) -> typer.Exit:
    console.error(message)
    return typer.Exit(2)


def _read(path: str, what: str) -> str:
    """The text of ``path`` (``-``: stdin); exit 2 when it cannot be read."""
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _unusable(f"{what}: no such file: {path}") from None
    except IsADirectoryError:
        raise _unusable(f"{what}: a directory, not a file: {path}") from None
    except UnicodeDecodeError:
        raise _unusable(f"{what}: not UTF-8 text: {path}") from None
    except OSError as e:
        raise _unusable(f"{what}: cannot read {path}: {e.strerror or e}") from None


@receipts_app.command("verify")
def receipts_verify(
    file: Annotated[
        str, typer.Argument(help="An export: JSON lines, one receipt each (- for stdin).")
    ],
    keys: Annotated[
        Path,
        typer.Option(
            "--keys",
            help="The tenant's public keys: a JWKS (/.well-known/billstream/{tenant}/keys.json).",
        ),
    ],
) -> None:
    """Verify an export offline (no database, no broker): every receipt's hash, canonical
    payload, key and signature, and each chain's order (no gap, repeat, reordering or
    break). Exit 0 all verified, 1 a receipt failed (the first is printed: line, receipt,
    seq, why), 2 the export or the keys cannot be used."""
    from workers.ops import receipts as ops
    from workers.receipts import KeysError, parse_keys, verify_export

    try:
        document = json.loads(_read(str(keys), "--keys"))
    except ValueError as e:
        raise _unusable(f"--keys: not JSON: {e}") from None
    try:
        parsed = parse_keys(document)
    except KeysError as e:
        raise _unusable(f"--keys: {e}") from None
    lines = ops.export_lines(_read(file, "FILE"))
    if not any(line.strip() for line in lines):
        raise _unusable(f"FILE: no receipt in {file}")
    report = verify_export(lines, parsed)
    if report.failure is not None:
        console.out.print(str(report.failure))
        raise typer.Exit(1)
    console.out.print(ops.verify_summary(report))


def _write(output: Path | None, write: Callable[[TextIO], T]) -> T:
    """``write`` to stdout, or to ``output`` whole or not at all (a temporary file beside
    it, renamed when complete)."""
    if output is None:
        return write(sys.stdout)
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as f:
            result = write(f)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return result


Tenant = Annotated[
    str | None, typer.Option("--tenant", help="The tenant (default: the only one there is).")
]
Output = Annotated[
    Path | None, typer.Option("--output", help="Write to this file (default: stdout).")
]


@receipts_app.command("export")
def receipts_export(
    customer: Annotated[str, typer.Option("--customer", help="The customer's external id.")],
    tenant: Tenant = None,
    output: Output = None,
) -> None:
    """A customer's chain as JSON lines, in order: what "billstream receipts verify" checks."""
    from workers.ops import receipts as ops
    from workers.ops import tax_report

    settings = console.settings()
    console.require(settings, database=True)
    who = console.run(tax_report.tenant_of(settings, tenant))
    with console.bars() as bars:
        count = _write(
            output, lambda f: console.run(ops.write_chain(settings, who, customer, f, bars))
        )
    where = f" to {output}" if output is not None else ""
    typer.echo(f"{count} receipt(s) of customer {customer!r} written{where}", err=True)


@receipts_app.command("keys")
def receipts_keys(tenant: Tenant = None, output: Output = None) -> None:
    """The tenant's public keys, current and past with their validity, as a JWKS: what
    "billstream receipts verify --keys" reads."""
    from workers.ops import receipts as ops
    from workers.ops import tax_report

    settings = console.settings()
    console.require(settings, database=True)
    who = console.run(tax_report.tenant_of(settings, tenant))
    document = console.run(ops.tenant_keys(settings, who))
    _write(output, lambda f: f.write(json.dumps(document, indent=2) + "\n"))
    if output is not None:
        typer.echo(f"{len(document['keys'])} key(s) of {who} written to {output}", err=True)


@receipts_app.command("audit")
def receipts_audit(
    tenant: Tenant = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rebuild every chain of the tenant from the database and compare it with what was
    issued: each chain verifies with the tenant's keys and ends at its recorded head, each
    receipt attests what its document says, every finalized invoice, credit note,
    succeeded payment and refund has a receipt and every receipt its document. Exit 0
    clean, 1 a problem found (each is printed)."""
    from workers.ops import receipts as ops
    from workers.ops import tax_report

    settings = console.settings()
    console.require(settings, database=True)
    who = console.run(tax_report.tenant_of(settings, tenant))
    with console.bars() as bars:
        result = console.run(ops.audit(settings, who, bars))
    if as_json:
        console.print_json(result.to_json())
    else:
        for p in result.problems:
            console.out.print(str(p))
        for p in result.unchecked:
            console.out.print(f"unchecked: {p}")
        console.out.print(result.summary())
        n = len(result.problems)
        console.out.print("no problem found" if not n else f"{n} problem(s) found")
    if not result.clean:
        raise typer.Exit(1)
