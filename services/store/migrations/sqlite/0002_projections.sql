-- Read models, rebuilt from the log by `gantry projections rebuild`.
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT    PRIMARY KEY,
    pipeline      TEXT    NOT NULL,
    commit_sha    TEXT    NOT NULL,
    branch        TEXT    NOT NULL,
    repository    TEXT    NOT NULL,
    trigger_kind  TEXT    NOT NULL,
    message       TEXT,
    author        TEXT,
    status        TEXT    NOT NULL,
    reason        TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    last_position BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_pipeline ON runs (pipeline, created_at);

CREATE TABLE IF NOT EXISTS stages (
    run_id        TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    ordinal       BIGINT  NOT NULL,
    after_stage   TEXT,
    steps         TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    waiting       TEXT,
    reason        TEXT,
    package_digest TEXT,
    image         TEXT,
    image_digest  TEXT,
    approvals     TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    PRIMARY KEY (run_id, stage)
);

-- What each stage of each pipeline runs now.
CREATE TABLE IF NOT EXISTS releases (
    pipeline      TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    commit_sha    TEXT    NOT NULL,
    image         TEXT,
    digest        TEXT,
    promoted_at   TEXT    NOT NULL,
    PRIMARY KEY (pipeline, stage)
);
