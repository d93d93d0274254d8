-- The IM core's tables; the same columns as SQLite's, in PostgreSQL's types.
CREATE TABLE inbound (
    platform TEXT NOT NULL,
    robot TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    conversation_type TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_nick TEXT NOT NULL,
    text TEXT NOT NULL,
    at_bot BOOLEAN NOT NULL,
    out_track_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    card_created BOOLEAN NOT NULL DEFAULT FALSE,
    detail TEXT,
    received_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    shown_bytes BIGINT NOT NULL DEFAULT 0,
    payload TEXT,
    PRIMARY KEY (platform, robot, msg_id)
);
CREATE INDEX inbound_open ON inbound (platform, robot, received_ms) WHERE state = 'accepted';
CREATE TABLE card_marks (
    platform TEXT NOT NULL,
    robot TEXT NOT NULL,
    card TEXT NOT NULL,
    status TEXT NOT NULL,
    added_ms BIGINT NOT NULL,
    PRIMARY KEY (platform, robot, card)
);
CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL
);
CREATE TABLE session_turns (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX session_turns_key ON session_turns (key, id);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    platform TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    session TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    sender_nick TEXT NOT NULL,
    handler TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    first_visible_ms BIGINT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    context_turns BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    msg_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_at ON audit (at_ms);
