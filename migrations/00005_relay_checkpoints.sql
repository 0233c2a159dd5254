-- +goose Up
-- Where each relay stands in ledger order: the (transaction_id, position)
-- of the last event it published to its stream, named by that stream.
CREATE TABLE relay_checkpoints (
    name           text PRIMARY KEY,
    transaction_id xid8 NOT NULL,
    position       bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE relay_checkpoints;
