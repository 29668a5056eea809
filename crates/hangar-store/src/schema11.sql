-- Migration 11: deploy on push. An app's connection to a repository (its
-- URL and webhook secret sealed by the vault), every webhook delivery and
-- poll with its verdict, and every commit Hangar heard of with what became
-- of it (its build, when it got one). All go with their app.
CREATE TABLE git_connections (
    app_id TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    repo_sealed BLOB NOT NULL,
    repo_shown TEXT NOT NULL,
    branch TEXT NOT NULL,
    subdir TEXT NOT NULL DEFAULT '',
    secret_sealed BLOB NOT NULL,
    head TEXT,
    polled_at INTEGER,
    poll_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE git_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    delivery TEXT,
    event TEXT NOT NULL,
    git_ref TEXT,
    sha TEXT,
    verdict TEXT NOT NULL,
    detail TEXT,
    received_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX git_deliveries_once ON git_deliveries(app_id, source, delivery)
    WHERE delivery IS NOT NULL AND verdict != 'rejected';
CREATE INDEX git_deliveries_app ON git_deliveries(app_id, seq);
CREATE TABLE git_commits (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    sha TEXT NOT NULL,
    seq INTEGER NOT NULL,
    via TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    superseded_by TEXT,
    message TEXT,
    build_id TEXT,
    first_seen INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, sha)
);
CREATE INDEX git_commits_seq ON git_commits(app_id, seq);
ALTER TABLE builds ADD COLUMN git_sha TEXT;
ALTER TABLE releases ADD COLUMN git_sha TEXT;
ALTER TABLE releases ADD COLUMN git_message TEXT;
