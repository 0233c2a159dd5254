-- Indexes for searching the key list of a large organization (see
-- projections.Views.ListKeys, which relies on both):
--
-- key_list_newest also carries the columns the search and status filters
-- read, so that walking an organization's keys newest first tests each one
-- in the index alone (an index-only scan) and visits the table only for the
-- keys of the page. Without them every key walked past is a table visit.
--
-- key_list_org_name replaces the trigram index over every organization's
-- names with one whose entries also hold the organization (btree_gin), so
-- that a rare term finds the organization's matches without visiting every
-- other organization's matches in the table.

-- +goose Up
CREATE EXTENSION IF NOT EXISTS btree_gin;

DROP INDEX key_list_newest;
CREATE INDEX key_list_newest ON key_list (org_id, created_at DESC, key_id DESC)
    INCLUDE (name, revoked_at, expires_at);

DROP INDEX key_list_name;
CREATE INDEX key_list_org_name ON key_list USING gin (org_id, name gin_trgm_ops);

-- +goose Down
DROP INDEX key_list_org_name;
CREATE INDEX key_list_name ON key_list USING gin (name gin_trgm_ops);

DROP INDEX key_list_newest;
CREATE INDEX key_list_newest ON key_list (org_id, created_at DESC, key_id DESC);
