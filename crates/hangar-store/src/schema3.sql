-- Migration 3: resources declared in code, and secrets. Values are sealed
-- (encrypted and authenticated) by hangar-resources before they get here;
-- the store never sees them in the clear.
CREATE TABLE secrets (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sealed BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, name)
);
CREATE TABLE resources (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    -- What users see: e.g. the database name.
    name TEXT NOT NULL,
    -- provisioning | ready | failed
    status TEXT NOT NULL,
    -- Why it failed, worded for the user.
    detail TEXT,
    -- Sealed credentials (JSON), NULL until ready.
    sealed BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, kind)
);
