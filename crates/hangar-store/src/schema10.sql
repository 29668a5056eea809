-- Migration 10: TLS. A certificate per host the edge serves over HTTPS
-- (an app's own name, a custom domain, the API's name), ordered by ACME or
-- uploaded; its private key sealed by the vault. A certificate of an app's
-- goes with its app. An ACME account per directory, sealed too. HSTS is an
-- app's choice.
CREATE TABLE certificates (
    host TEXT PRIMARY KEY,
    app_id TEXT REFERENCES apps(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    chain_pem TEXT,
    key_sealed BLOB,
    not_before INTEGER,
    not_after INTEGER,
    issuer TEXT,
    serial TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE INDEX certificates_app ON certificates(app_id);
CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    sealed BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
ALTER TABLE apps ADD COLUMN hsts INTEGER NOT NULL DEFAULT 0;
