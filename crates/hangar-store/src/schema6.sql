-- Migration 6: every org gets a range of host uids of its own. A runc
-- machine runs in a user namespace mapping its uids 0..65535 onto the
-- org's range, so uid 0 in an image is an unprivileged host uid, and no
-- two orgs' machines share a uid. Allocated on first need (NULL: none yet).
ALTER TABLE orgs ADD COLUMN uid_range INTEGER;
CREATE UNIQUE INDEX orgs_uid_range ON orgs(uid_range);
