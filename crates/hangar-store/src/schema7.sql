-- Migration 7: a fair build queue. Several workers claim builds; each
-- claim gives the org its turn number, and the next build goes to the org
-- whose last turn is oldest (none: first), oldest build first within it.
-- New statuses (text, no constraint): 'superseded' (a newer build of the
-- app was queued before it started) and 'cancelled'.
CREATE TABLE build_turns (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id) ON DELETE CASCADE,
    turn INTEGER NOT NULL
);
CREATE INDEX builds_app_status ON builds(app_id, status);
