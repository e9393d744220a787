-- DORA's four keys (gantry_store::dora), folded by the projector and
-- rebuilt with the other read models; the same SQL serves SQLite and
-- Postgres (migrations/postgres links here). Times are RFC 3339 UTC strings
-- with microseconds: ordered as strings.

-- One row per env.promoted: a deployment and its lead time.
CREATE TABLE IF NOT EXISTS dora_deployments (
    pipeline      TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    promoted_at   TEXT    NOT NULL,
    lead_seconds  BIGINT,
    PRIMARY KEY (run_id, stage)
);
CREATE INDEX IF NOT EXISTS dora_deployments_window ON dora_deployments (pipeline, stage, promoted_at);

-- One row per failed change, and when the stage was restored.
CREATE TABLE IF NOT EXISTS dora_failures (
    pipeline      TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    failed_at     TEXT    NOT NULL,
    restored_at   TEXT,
    PRIMARY KEY (run_id, stage)
);
CREATE INDEX IF NOT EXISTS dora_failures_window ON dora_failures (pipeline, stage, failed_at);

-- The commit time of each run's commit, from its package.built.
CREATE TABLE IF NOT EXISTS dora_commits (
    run_id        TEXT    PRIMARY KEY,
    committed_at  TEXT    NOT NULL
);
