-- The event table is the ledger: every change to a key is one immutable row.
-- It is also the outbox that the NATS relay and the sealer read, in ledger
-- order: (transaction_id, position), read only below the xid8 horizon so that
-- a transaction that commits late with a lower position is never skipped.

-- +goose Up
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id             uuid        NOT NULL,
    org_id         text        NOT NULL,
    key_id         text        NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    type           text        NOT NULL,
    actor          text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    data           jsonb       NOT NULL,
    CONSTRAINT events_stream_version PRIMARY KEY (key_id, stream_version),
    CONSTRAINT events_id UNIQUE (id),
    CONSTRAINT events_position UNIQUE (position)
);
CREATE INDEX events_ledger_order ON events (transaction_id, position);
CREATE INDEX events_org_order ON events (org_id, transaction_id, position);

-- +goose StatementBegin
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- An Idempotency-Key protects one generate for 24 hours.
CREATE TABLE idempotency_keys (
    org_id       text        NOT NULL,
    idem_key     text        NOT NULL,
    request_hash text        NOT NULL,
    key_id       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, idem_key)
);

-- +goose Down
DROP TABLE idempotency_keys;
DROP TRIGGER events_append_only ON events;
DROP FUNCTION events_refuse_change();
DROP TABLE events;
