-- Migration 8: scoped, expiring, revocable tokens, and the audit log.
-- A token's scope is 'admin' (all of its org), 'read' (every read of its
-- org) or 'deploy:<app>' (deploy and read that app only). Tokens made
-- before scopes keep all of their org: 'admin'.
ALTER TABLE tokens ADD COLUMN id TEXT;
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
UPDATE tokens SET id = 'tok_' || lower(hex(randomblob(8))) WHERE id IS NULL;
CREATE UNIQUE INDEX tokens_id ON tokens(id);
CREATE INDEX tokens_org ON tokens(org_id);
-- One row per mutation: who (the token's id and name, kept when the token
-- is revoked), when, what (the route's action), on what (target: an app,
-- machine, build, token or org), and a summary that never holds a secret
-- value. `app` is the app's name when the target belongs to one.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    token_id TEXT NOT NULL,
    token_name TEXT NOT NULL,
    action TEXT NOT NULL,
    app TEXT,
    target TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX audit_org ON audit(org_id, id);
CREATE INDEX audit_org_app ON audit(org_id, app, id);
-- The generation of each app's Shuttle runtime token (derived from the
-- vault key, the app id and this number): rotating bumps it, and the old
-- token stops verifying at once. No row: generation 0.
CREATE TABLE shuttle_tokens (
    app_id TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    generation INTEGER NOT NULL
);
-- A machine's exit event carries how it exited, so a job's exit code
-- outlives the machine (auto_destroy) in its event log.
ALTER TABLE machine_events ADD COLUMN exit_code INTEGER;
ALTER TABLE machine_events ADD COLUMN oom_killed INTEGER;
