"""The operations commands of the ``billstream`` CLI (registered in ``workers/cli.py``), one
module per command: ``replay``, ``dlq list|show|redrive``, ``lag``, ``quarantine
list|show|release``, ``schemas check|publish|docs``; ``console`` is what they share.

Thin: parse options, call ``workers/ops``, print. Results go to stdout (a table, or JSON
with ``--json``); progress bars and errors to stderr. Exit codes: 0 done, 1 refused or
failed (``error: <option>: <why>``), 2 a bad command line.
"""
