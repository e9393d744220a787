-- The notifier's outbox and its targets' records (gantry_store::notify):
-- its own state, not a read model, so `projections rebuild` keeps it. The
-- same SQL serves SQLite and Postgres (migrations/postgres links here).

CREATE TABLE IF NOT EXISTS notify_targets (
    target            TEXT    PRIMARY KEY,
    pipeline          TEXT    NOT NULL,
    host              TEXT    NOT NULL,
    format            TEXT    NOT NULL,
    delivered         BIGINT  NOT NULL DEFAULT 0,
    failed_attempts   BIGINT  NOT NULL DEFAULT 0,
    given_up          BIGINT  NOT NULL DEFAULT 0,
    last_error        TEXT,
    last_failure_at   TEXT,
    last_delivery_at  TEXT
);

-- One row per (target, event) still to deliver; delivered or abandoned
-- rows are deleted.
CREATE TABLE IF NOT EXISTS notify_outbox (
    target         TEXT    NOT NULL,
    position       BIGINT  NOT NULL,
    pipeline       TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    attempts       BIGINT  NOT NULL DEFAULT 0,
    first_failure  TEXT,
    next_at        TEXT    NOT NULL,
    last_error     TEXT,
    PRIMARY KEY (target, position)
);
