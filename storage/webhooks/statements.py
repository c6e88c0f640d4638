"""The raw SQL of the webhooks hot paths: set-based (``unnest`` arrays), one statement per
fan-out batch, one claim, one update + one insert per batch of outcomes. Keep them set-based:
a join per batch once cost 8x (bench/RESULTS.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import literal_column, text
from sqlalchemy.dialects import postgresql

from storage.quarantine import not_quarantined

# the webhooks jobs (``workers.runtime.jobs``) whose quarantined messages are not claimed
DELIVER_JOB = "webhooks.deliver"  # claiming and sending
RECORD_JOB = "webhooks.record"  # recording outcomes

# Deleting an endpoint may happen at any moment, between the fan-out reading the endpoints
# and inserting their messages, or while a message is being delivered: every statement
# that writes a row referring to an endpoint or a message writes it only while that row
# still exists, under a ``FOR KEY SHARE`` lock (a concurrent delete waits for this
# transaction; one that committed first makes the row disappear from the join). An insert
# that trusts a snapshot would violate the foreign key and fail its whole batch: the event
# would be dead-lettered, the outcomes of every tenant never recorded (decision: 0013).
INSERT_MESSAGES = text(
    """
    WITH d AS (
        SELECT * FROM unnest(
            CAST(:tenant_id AS text[]), CAST(:id AS text[]), CAST(:endpoint_id AS text[]),
            CAST(:event_id AS text[]), CAST(:event_type AS text[]),
            CAST(:payload AS bytea[]), CAST(:next_attempt_at AS timestamptz[]))
          WITH ORDINALITY AS d(t, i, e, ev, ty, p, n, o)
    ), live AS MATERIALIZED (  -- in key order, the lock order of every writer
        SELECT ep.tenant_id, ep.id FROM webhook_endpoints ep
        WHERE (ep.tenant_id, ep.id) IN (SELECT t, e FROM d)
        ORDER BY ep.tenant_id, ep.id
        FOR KEY SHARE
    )
    INSERT INTO webhook_messages
        (tenant_id, id, endpoint_id, event_id, event_type, payload, status, attempts,
         cycle_attempts, next_attempt_at, created_at)
    SELECT d.t, d.i, d.e, d.ev, d.ty, d.p, 'pending', 0, 0, d.n, d.n
    FROM d JOIN live ON live.tenant_id = d.t AND live.id = d.e
    ORDER BY d.o
    ON CONFLICT (tenant_id, id) DO NOTHING
    """
)


def _sql(clause: Any) -> str:
    """A SQLAlchemy clause as PostgreSQL text, its (constant) values inlined."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


# a message quarantined by either webhooks job is left out until an operator releases it
_NOT_QUARANTINED = " AND ".join(
    _sql(
        not_quarantined(
            job, "webhook_message", literal_column("m.tenant_id"), literal_column("m.id")
        )
    )
    for job in (DELIVER_JOB, RECORD_JOB)
)

CLAIM = text(
    f"""
    WITH due AS (
        SELECT m.tenant_id, m.id
        FROM webhook_messages m
        JOIN webhook_endpoints e ON e.tenant_id = m.tenant_id AND e.id = m.endpoint_id
        WHERE m.status = 'pending'
          AND m.next_attempt_at <= :now
          AND (m.leased_until IS NULL OR m.leased_until <= :now)
          AND e.enabled
          AND {_NOT_QUARANTINED}
          AND (NOT e.ordered OR m.seq = (
                SELECT min(h.seq) FROM webhook_messages h
                WHERE h.tenant_id = m.tenant_id AND h.endpoint_id = m.endpoint_id
                  AND h.status = 'pending'))
        ORDER BY m.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF m SKIP LOCKED
    )
    UPDATE webhook_messages m
    SET leased_until = :lease_until, lease_token = :token
    FROM due, webhook_endpoints e
    WHERE m.tenant_id = due.tenant_id AND m.id = due.id
      AND e.tenant_id = m.tenant_id AND e.id = m.endpoint_id
    RETURNING m.tenant_id, m.id, m.endpoint_id, m.event_id, m.event_type, m.payload,
              m.attempts, m.cycle_attempts, m.next_attempt_at, e.url, e.secret,
              e.previous_secret, e.previous_secret_expires_at, e.rate_limit_per_s,
              e.failing_since
    """
)

UPDATE_MESSAGES = text(
    """
    UPDATE webhook_messages m SET
        status = u.status,
        attempts = m.attempts + CASE WHEN u.counted THEN 1 ELSE 0 END,
        cycle_attempts = u.cycle_attempts,
        next_attempt_at = u.next_attempt_at,
        leased_until = NULL,
        lease_token = NULL,
        last_attempt_at = COALESCE(u.last_attempt_at, m.last_attempt_at),
        last_response_status = CASE WHEN u.counted THEN u.last_response_status
                                    ELSE m.last_response_status END,
        finished_at = u.finished_at
    FROM unnest(CAST(:tenant_id AS text[]), CAST(:id AS text[]), CAST(:lease_token AS text[]),
                CAST(:status AS text[]), CAST(:counted AS boolean[]),
                CAST(:cycle_attempts AS integer[]), CAST(:next_attempt_at AS timestamptz[]),
                CAST(:last_attempt_at AS timestamptz[]),
                CAST(:last_response_status AS integer[]), CAST(:finished_at AS timestamptz[]))
         AS u(tenant_id, id, lease_token, status, counted, cycle_attempts, next_attempt_at,
              last_attempt_at, last_response_status, finished_at)
    WHERE m.tenant_id = u.tenant_id AND m.id = u.id AND m.lease_token = u.lease_token
    RETURNING m.tenant_id, m.id
    """
)

# the endpoints of a batch of outcomes, locked first and in key order: a delete of one of
# them waits for the recorder (or has happened), so the recorder never holds a message its
# delete wants while waiting for the endpoint row the delete holds (no deadlock)
LOCK_ENDPOINTS = text(
    """
    SELECT e.tenant_id, e.id
    FROM webhook_endpoints e
    JOIN unnest(CAST(:tenant_id AS text[]), CAST(:endpoint_id AS text[])) AS k(t, i)
      ON e.tenant_id = k.t AND e.id = k.i
    ORDER BY e.tenant_id, e.id
    FOR KEY SHARE OF e
    """
)

# attempts of the endpoints ``record`` found (and locked): the others were deleted
INSERT_ATTEMPTS = text(
    """
    INSERT INTO webhook_attempts
        (tenant_id, endpoint_id, message_id, attempted_at, status, response_status,
         response_body, latency_ms, error)
    SELECT * FROM unnest(CAST(:tenant_id AS text[]), CAST(:endpoint_id AS text[]),
                         CAST(:message_id AS text[]), CAST(:attempted_at AS timestamptz[]),
                         CAST(:status AS text[]), CAST(:response_status AS integer[]),
                         CAST(:response_body AS text[]), CAST(:latency_ms AS integer[]),
                         CAST(:error AS text[]))
    """
)
