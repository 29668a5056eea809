-- Migration 4: rollouts. A release carries the hangar.toml it was built
-- with (NULL: none, the defaults apply), so a rollback re-applies image and
-- config together; `description` says where it came from ("deploy",
-- "rollback to v3"). An app's machine count set by `hangar scale`
-- overrides the count in hangar.toml (NULL: use the file's).
ALTER TABLE releases ADD COLUMN config TEXT;
ALTER TABLE releases ADD COLUMN description TEXT NOT NULL DEFAULT 'deploy';
ALTER TABLE apps ADD COLUMN scale INTEGER;
