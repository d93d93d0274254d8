-- The audit of HTTP skill calls (`skills::calls`): who, which skill, how it ended; never the URL or a header.
CREATE TABLE IF NOT EXISTS skill_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    platform TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    skill TEXT NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER,
    latency_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS skill_calls_at ON skill_calls (at_ms);
