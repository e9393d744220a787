CREATE INDEX IF NOT EXISTS events_pipeline ON events (pipeline, position);
