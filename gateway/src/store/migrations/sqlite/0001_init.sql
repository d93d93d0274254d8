-- The schema as it stood before versioned migrations: created where missing. Databases written before
-- some columns existed gain them in code right after this (`store::sqlite::legacy_columns`).
CREATE TABLE IF NOT EXISTS inbound (
    platform TEXT NOT NULL,
    robot TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    conversation_type TEXT NOT NULL,
    sender_staff_id TEXT NOT NULL,
    sender_nick TEXT NOT NULL,
    text TEXT NOT NULL,
    at_bot INTEGER NOT NULL,
    session_webhook TEXT,
    webhook_expires_ms INTEGER,
    out_track_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    card_created INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    received_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    sender_id TEXT NOT NULL DEFAULT '',
    sender_union_id TEXT,
    shown_bytes INTEGER NOT NULL DEFAULT 0,
    payload TEXT,
    PRIMARY KEY (platform, robot, msg_id)
);
CREATE TABLE IF NOT EXISTS card_marks (
    platform TEXT NOT NULL,
    robot TEXT NOT NULL,
    card TEXT NOT NULL,
    status TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY (platform, robot, card)
);
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    started_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS session_turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS session_turns_key ON session_turns (key, id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    platform TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    session TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_nick TEXT NOT NULL,
    handler TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    first_visible_ms INTEGER,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    context_turns INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    msg_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
