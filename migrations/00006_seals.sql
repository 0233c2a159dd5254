-- The audit log: the sealer gives each committed event, in ledger order, a
-- gapless seq (its leaf index in an RFC 6962 Merkle tree) and a leaf hash over
-- the event's canonical encoding (audit.Leaf). Sealing never touches the
-- events table; these tables are append-only like it.
--
-- seals: one row per sealed event. position joins it to its event; org_id and
-- org_prev_seq chain each organization's sealed events, so that an export of
-- one organization can show that none is missing. Only the keys are indexed,
-- both of them in insertion order: an index on org_id would take a random
-- insert per sealed event. An organization's seals are found through the
-- events table's events_org_order index instead.
--
-- merkle_nodes: the hashes of the complete subtrees of 16 leaves or more
-- (level >= 4), written with the leaves they cover. A node below level 4 is
-- folded from at most 8 leaves of seals, so a proof reads at most a few dozen
-- rows, and the table holds about one row per 8 events.
--
-- checkpoints: the signed tree heads, as C2SP signed notes.

-- +goose Up
CREATE TABLE seals (
    seq          bigint      PRIMARY KEY CHECK (seq >= 0),
    position     bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    org_id       text        NOT NULL,
    org_prev_seq bigint      CHECK (org_prev_seq < seq),
    leaf_hash    bytea       NOT NULL CHECK (length(leaf_hash) = 32),
    sealed_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT seals_position UNIQUE (position)
);

CREATE TABLE merkle_nodes (
    level smallint NOT NULL CHECK (level >= 4 AND level < 64),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE checkpoints (
    tree_size  bigint      PRIMARY KEY CHECK (tree_size > 0),
    root_hash  bytea       NOT NULL CHECK (length(root_hash) = 32),
    note       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the % table is append-only: % is refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER seals_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON seals
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER merkle_nodes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- +goose Down
DROP TABLE checkpoints;
DROP TABLE merkle_nodes;
DROP TABLE seals;
DROP FUNCTION audit_refuse_change();
