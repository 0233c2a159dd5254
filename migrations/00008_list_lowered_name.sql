-- key_list.lname holds lower(name), kept by Postgres (a stored generated
-- column), and both of the search's indexes read it: key_list_newest
-- carries it in place of name, and key_list_org_lname (the trigram index)
-- is built on it in place of the expression lower(name). A search
-- (projections.Views.ListKeys) tests lname LIKE pattern, which a walk of
-- key_list_newest tests for each key in the index alone, where it lowered
-- every name it walked past, and which the trigram index serves as before.
-- Lowering was most of a walk's cost: 20,000 keys took 13.3 ms with
-- lower(name) LIKE, 6.8 ms with a plain LIKE and 5.0 ms with no test at all.
-- lname is lower(name) as it was when the row was written: should the
-- database's collation change its case rules (an operating system or ICU
-- upgrade), REINDEX does not lower the names again; UPDATE key_list SET
-- name = name, or a views rebuild, does.
--
-- Adding the column rewrites key_list and its indexes, under a lock that
-- holds off the views' readers and writers until it is done (12 s for a
-- million keys on a 2-core machine; see the README's upgrade note). The new
-- indexes are then built CONCURRENTLY, outside a transaction, so that keys
-- can still be written and listed while they build, and take the old ones'
-- names. A rewritten table has no page marked all-visible, so that every
-- key walked would be read from the table as well until autovacuum came by
-- (a search's p99 under the bench's load was 25.7 ms before VACUUM, 13.3 ms
-- after); VACUUM marks them (0.6 s) and ANALYZE gives the planner
-- statistics on the new column. Run again after a failure half way, each
-- step finds or clears what the last run left.

-- +goose NO TRANSACTION
-- +goose Up
ALTER TABLE key_list ADD COLUMN IF NOT EXISTS lname text GENERATED ALWAYS AS (lower(name)) STORED;
DROP INDEX CONCURRENTLY IF EXISTS key_list_newest_lname;
CREATE INDEX CONCURRENTLY key_list_newest_lname ON key_list (org_id, created_at DESC, key_id DESC)
    INCLUDE (lname, revoked_at, expires_at);
DROP INDEX CONCURRENTLY IF EXISTS key_list_newest;
ALTER INDEX key_list_newest_lname RENAME TO key_list_newest;
DROP INDEX CONCURRENTLY IF EXISTS key_list_org_lname_column;
CREATE INDEX CONCURRENTLY key_list_org_lname_column ON key_list USING gin (org_id, lname gin_trgm_ops);
DROP INDEX CONCURRENTLY IF EXISTS key_list_org_lname;
ALTER INDEX key_list_org_lname_column RENAME TO key_list_org_lname;
VACUUM (ANALYZE) key_list;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS key_list_org_lname_expression;
CREATE INDEX CONCURRENTLY key_list_org_lname_expression ON key_list USING gin (org_id, lower(name) gin_trgm_ops);
DROP INDEX CONCURRENTLY IF EXISTS key_list_org_lname;
ALTER INDEX key_list_org_lname_expression RENAME TO key_list_org_lname;
DROP INDEX CONCURRENTLY IF EXISTS key_list_newest_name;
CREATE INDEX CONCURRENTLY key_list_newest_name ON key_list (org_id, created_at DESC, key_id DESC)
    INCLUDE (name, revoked_at, expires_at);
DROP INDEX CONCURRENTLY IF EXISTS key_list_newest;
ALTER INDEX key_list_newest_name RENAME TO key_list_newest;
ALTER TABLE key_list DROP COLUMN IF EXISTS lname;
