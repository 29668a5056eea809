-- Migration 9: custom domains. A host outside the platform's domain that
-- one app answers for; global, since it is a hostname. Goes with its app.
CREATE TABLE domains (
    host TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE INDEX domains_app ON domains(app_id);
