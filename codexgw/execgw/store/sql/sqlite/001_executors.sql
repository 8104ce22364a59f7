CREATE TABLE IF NOT EXISTS executors (
    exe_id                  TEXT PRIMARY KEY,
    user_id                 TEXT NOT NULL,
    display_name            TEXT,
    description             TEXT,
    default_cwd             TEXT,
    registration_token_hash TEXT NOT NULL,
    registered_at           TEXT NOT NULL,
    last_seen_at            TEXT
);
CREATE INDEX IF NOT EXISTS idx_executors_user ON executors(user_id);
CREATE TABLE IF NOT EXISTS workspace_executors (
    workspace_id TEXT NOT NULL,
    exe_id       TEXT NOT NULL REFERENCES executors(exe_id) ON DELETE CASCADE,
    is_default   INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0,1)),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, exe_id)
);
CREATE INDEX IF NOT EXISTS idx_workspace_executors_workspace ON workspace_executors(workspace_id);
