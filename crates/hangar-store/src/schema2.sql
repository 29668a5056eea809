-- Migration 2: machines become Fly-style machines (name, region, instance
-- id, config, events, lease, cordon), usable with or without a release;
-- image references get names.
CREATE TABLE machines_v2 (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    release_id TEXT,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    config TEXT NOT NULL,
    image_digest TEXT NOT NULL,
    state TEXT NOT NULL,
    driver TEXT NOT NULL,
    port INTEGER NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    cordoned INTEGER NOT NULL DEFAULT 0,
    lease_nonce TEXT,
    lease_owner TEXT,
    lease_description TEXT,
    lease_expires_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO machines_v2 (id, app_id, release_id, name, region, instance_id, config, image_digest,
                         state, driver, port, pid, exit_code, created_at, updated_at)
SELECT m.id, m.app_id, NULLIF(m.release_id, ''), m.id, 'local', m.id,
       json_object('image', COALESCE(r.image_digest, '')), COALESCE(r.image_digest, ''),
       m.state, m.driver, m.port, m.pid, m.exit_code, m.created_at, m.updated_at
FROM machines m LEFT JOIN releases r ON r.id = m.release_id;
DROP TABLE machines;
ALTER TABLE machines_v2 RENAME TO machines;
CREATE INDEX machines_app ON machines(app_id, state);

CREATE TABLE machine_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX machine_events_machine ON machine_events(machine_id, seq);

-- Named image references, per org: `name:tag` → manifest digest.
CREATE TABLE image_refs (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, name)
);

-- The first org administers the platform (it may create other orgs).
ALTER TABLE orgs ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
UPDATE orgs SET admin = 1 WHERE rowid = (SELECT MIN(rowid) FROM orgs);
