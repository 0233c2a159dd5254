package eventstore_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// The tests live in package eventstore_test because internal/pgtest imports
// eventstore (to migrate its template database).

// bundle is what most tests need: a migrated database of their own, a pool on
// it and a store.
type bundle struct {
	pool  *pgxpool.Pool
	store *eventstore.Store
}

func setup(t *testing.T, inline ...eventstore.Projector) bundle {
	t.Helper()
	pool := pgtest.NewPool(t)
	return bundle{pool: pool, store: eventstore.New(pool, inline...)}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// generated returns a key.generated event that opens the stream of keyID.
func generated(orgID, keyID string, at time.Time) domain.Event {
	secret := domain.NewKeySecret(domain.DefaultKeyPrefix)
	return domain.Event{
		ID:            domain.NewEventID(),
		Type:          domain.TypeKeyGenerated,
		OrgID:         orgID,
		KeyID:         keyID,
		StreamVersion: 1,
		OccurredAt:    domain.Truncate(at),
		Actor:         "alice@example.com",
		Data: domain.KeyGenerated{
			KeyID:   keyID,
			Name:    "production-key",
			KeyHash: domain.HashKey(secret).String(),
			Masked:  domain.MaskKey(secret),
		},
	}
}

// revoked returns a key.revoked event at the given version of keyID's stream.
func revoked(orgID, keyID string, version int64, at time.Time) domain.Event {
	return domain.Event{
		ID:            domain.NewEventID(),
		Type:          domain.TypeKeyRevoked,
		OrgID:         orgID,
		KeyID:         keyID,
		StreamVersion: version,
		OccurredAt:    domain.Truncate(at),
		Actor:         "bob@example.com",
		Data:          domain.KeyRevoked{KeyID: keyID, KeyHash: domain.HashKey(keyID).String(), Reason: "rotated"},
	}
}

// appendKey appends a fresh key's key.generated event and returns it as
// stored.
func appendKey(t *testing.T, store domain.EventStore, orgID string) domain.Event {
	t.Helper()
	out, err := store.Append(context.Background(), 0, []domain.Event{generated(orgID, domain.NewKeyID(), time.Now())}, nil)
	require.NoError(t, err)
	require.Len(t, out, 1)
	return out[0]
}

// requireSameEvent compares two events field by field, times by instant.
func requireSameEvent(t *testing.T, want, got domain.Event) {
	t.Helper()
	require.Equal(t, want.ID, got.ID)
	require.Equal(t, want.Type, got.Type)
	require.Equal(t, want.OrgID, got.OrgID)
	require.Equal(t, want.KeyID, got.KeyID)
	require.Equal(t, want.StreamVersion, got.StreamVersion)
	require.True(t, want.OccurredAt.Equal(got.OccurredAt), "occurred_at: want %s, got %s", want.OccurredAt, got.OccurredAt)
	require.Equal(t, want.Actor, got.Actor)
	require.Equal(t, want.Data, got.Data)
	require.Equal(t, want.Position, got.Position)
}

// ledgerRow is one events row as a plain SELECT reads it, in ledger order.
type ledgerRow struct {
	xid      uint64
	position int64
	id       string
	keyID    string
	version  int64
}

// readLedger reads the whole events table in ledger order, bypassing the
// store. The ORDER BY names the table's columns: a bare transaction_id would
// be the output column transaction_id::text, and text order puts "100000"
// before "99999".
func readLedger(t *testing.T, pool *pgxpool.Pool) []ledgerRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT transaction_id::text, position, id::text, key_id, stream_version
		FROM events ORDER BY events.transaction_id, events.position`)
	require.NoError(t, err)
	var out []ledgerRow
	for rows.Next() {
		var r ledgerRow
		var xid string
		require.NoError(t, rows.Scan(&xid, &r.position, &r.id, &r.keyID, &r.version))
		r.xid, err = strconv.ParseUint(xid, 10, 64)
		require.NoError(t, err)
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	return out
}

func countEvents(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&n))
	return n
}

func countIdempotencyKeys(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency_keys`).Scan(&n))
	return n
}

// rawInsert inserts one key.revoked event with a hand-written INSERT inside
// tx, as a writer that does not go through the store would, and returns the
// row's id, position and transaction id.
func rawInsert(t *testing.T, ctx context.Context, tx pgx.Tx, orgID, keyID string, version int64) ledgerRow {
	t.Helper()
	r := ledgerRow{id: domain.NewEventID(), keyID: keyID, version: version}
	var xid string
	err := tx.QueryRow(ctx, `INSERT INTO events (id, org_id, key_id, stream_version, type, actor, occurred_at, data)
		VALUES ($1, $2, $3, $4, 'key.revoked', 'raw-writer', now(), jsonb_build_object('key_id', $3::text, 'key_hash', '', 'reason', 'raw'))
		RETURNING position, transaction_id::text`,
		r.id, orgID, keyID, version).Scan(&r.position, &xid)
	require.NoError(t, err)
	r.xid, err = strconv.ParseUint(xid, 10, 64)
	require.NoError(t, err)
	return r
}

// waitForLockWaiter waits until a session of pool's database waits on a
// lock: the signal that a concurrent statement is blocked behind an open
// transaction.
func waitForLockWaiter(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	waitFor(t, "a session to wait on a lock", func() bool { return lockWaiters(t, pool) > 0 })
}

// lockWaiters counts the sessions of pool's database waiting on a lock.
func lockWaiters(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n))
	return n
}

// waitFor polls cond, on the test's goroutine, until it holds. Readers of the
// ledger wait for the xid horizon, which every transaction on the server
// (other tests' too) can hold back for a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// begin starts a transaction by hand, rolled back when t ends if it is still
// open, so that a failing test never leaves a connection that keeps the
// pool from closing.
func begin(t *testing.T, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}
