-- The log of record. SQLite has one writer at a time, so positions commit
-- in order and a reader that has seen position N has seen all below it.
CREATE TABLE IF NOT EXISTS events (
    position        INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    pipeline        TEXT    NOT NULL,
    run_id          TEXT,
    event_type      TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX IF NOT EXISTS events_run_id ON events (run_id, position);

CREATE TABLE IF NOT EXISTS checkpoints (
    name        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS handled (
    event_id    TEXT    NOT NULL,
    handler     TEXT    NOT NULL,
    handled_at  TEXT    NOT NULL,
    PRIMARY KEY (event_id, handler)
);
