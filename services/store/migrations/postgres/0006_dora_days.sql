-- DORA per day (gantry_store::dora): a stage's deployments of one UTC day
-- and their lead times, so a window's keys read one row per stage and day
-- instead of every deployment. Folded with dora_deployments; filled here
-- from it for logs folded before this table existed.
CREATE TABLE IF NOT EXISTS dora_days (
    pipeline     TEXT    NOT NULL,
    stage        TEXT    NOT NULL,
    day          TEXT    NOT NULL,   -- YYYY-MM-DD, UTC
    deployments  BIGINT  NOT NULL,
    leads        TEXT    NOT NULL,   -- lead seconds, comma-separated
    PRIMARY KEY (pipeline, stage, day)
);
CREATE INDEX IF NOT EXISTS dora_days_day ON dora_days (day);
CREATE INDEX IF NOT EXISTS dora_deployments_time ON dora_deployments (promoted_at);

INSERT INTO dora_days (pipeline, stage, day, deployments, leads)
SELECT pipeline, stage, substr(promoted_at, 1, 10), COUNT(*),
       COALESCE(string_agg(CAST(lead_seconds AS TEXT), ','), '')
FROM dora_deployments GROUP BY pipeline, stage, substr(promoted_at, 1, 10);
