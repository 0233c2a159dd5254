// Package eventstore keeps keyledger's events in Postgres with pgx.
//
// The events table is append-only (a trigger refuses UPDATE, DELETE and
// TRUNCATE). Append enforces an expected stream version: a stale version and
// a unique violation on (key_id, stream_version) give the same
// domain.ErrConflict. Tail reads the whole ledger in ledger order, which is
// (transaction_id, position) below the xid8 horizon
// pg_snapshot_xmin(pg_current_snapshot()): a transaction that took a lower
// position but commits later is still below every reader's cursor when it
// becomes visible, so no reader skips it.
//
// Projections that read-your-writes depends on are passed to New as inline
// projectors and run inside the appending transaction.
//
// Concurrent appends commit together, in one transaction per group (see
// Store.Append and package internal/coalesce): one commit serves many
// commands under load, and a conflict fails only its own append.
package eventstore
