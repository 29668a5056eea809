-- Migration 12: preview environments. One row per pull request of an app
-- that has (or had) a preview: its own app (`preview_app_id`, a separate
-- app with its own machines and resources, gone when the preview is torn
-- down), the head it runs, who opened it and whether that author may build
-- without approval, the commit a maintainer approved, and its time to live.
CREATE TABLE previews (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    preview_app_id TEXT,
    head_sha TEXT NOT NULL,
    head_ref TEXT NOT NULL,
    author TEXT NOT NULL,
    trusted INTEGER NOT NULL,
    approved_sha TEXT,
    state TEXT NOT NULL,
    detail TEXT,
    last_push INTEGER NOT NULL,
    ttl_secs INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, number)
);
CREATE INDEX previews_app ON previews(preview_app_id);
