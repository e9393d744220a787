-- The log of record. `position` is assigned under a transaction-scoped
-- advisory lock, so positions commit in order and a reader that has seen
-- position N has seen every position below it.
CREATE TABLE IF NOT EXISTS events (
    position        BIGINT      PRIMARY KEY,
    event_id        TEXT        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    pipeline        TEXT        NOT NULL,
    run_id          TEXT,
    event_type      TEXT        NOT NULL,
    event           TEXT        NOT NULL,
    recorded_at     TEXT        NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX IF NOT EXISTS events_run_id ON events (run_id, position);

-- Where each reader (relay, projector, embedded consumer) has got to.
CREATE TABLE IF NOT EXISTS checkpoints (
    name        TEXT        PRIMARY KEY,
    position    BIGINT      NOT NULL,
    updated_at  TEXT        NOT NULL
);

-- Effects already carried out, keyed by (event id, handler).
CREATE TABLE IF NOT EXISTS handled (
    event_id    TEXT        NOT NULL,
    handler     TEXT        NOT NULL,
    handled_at  TEXT        NOT NULL,
    PRIMARY KEY (event_id, handler)
);
