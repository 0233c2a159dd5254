-- The list and lookup views are projections of the events table: they hold
-- nothing the log does not, and projections.Rebuild makes them again from it.
-- The command path updates both in the transaction that appends, so that a
-- key is listed and verifiable as soon as its command returns.

-- +goose Up
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE key_list (
    org_id        text        NOT NULL,
    key_id        text        NOT NULL,
    name          text        NOT NULL,
    masked        text        NOT NULL,
    key_hash      bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    revoke_reason text        NOT NULL DEFAULT '',
    version       bigint      NOT NULL,
    PRIMARY KEY (org_id, key_id)
);
CREATE INDEX key_list_newest ON key_list (org_id, created_at DESC, key_id DESC);
CREATE INDEX key_list_name ON key_list USING gin (name gin_trgm_ops);

CREATE TABLE key_lookup (
    key_hash   bytea       PRIMARY KEY,
    org_id     text        NOT NULL,
    key_id     text        NOT NULL,
    name       text        NOT NULL,
    masked     text        NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    version    bigint      NOT NULL
);

-- +goose Down
DROP TABLE key_lookup;
DROP TABLE key_list;
