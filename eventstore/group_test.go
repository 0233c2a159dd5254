package eventstore_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// queueBehindAStalledAppend starts an append that waits on a lock held by an
// open transaction, then the appends of calls, which queue behind it (a pool
// of 4 connections has one appending worker), then lets the first one go.
// It returns each call's outcome.
func queueBehindAStalledAppend(t *testing.T, b bundle, calls []func() ([]domain.Event, error)) ([]domain.Event, [][]domain.Event, []error) {
	t.Helper()
	ctx := testContext(t)
	stalled := generated("org-a", domain.NewKeyID(), time.Now())
	tx := begin(t, b.pool)
	rawInsert(t, ctx, tx, "org-a", stalled.KeyID, 1)
	first := make(chan error, 1)
	var firstOut []domain.Event
	go func() {
		var err error
		firstOut, err = b.store.Append(ctx, 0, []domain.Event{stalled}, nil)
		first <- err
	}()
	waitForLockWaiter(t, b.pool)

	outs := make([][]domain.Event, len(calls))
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, call := range calls {
		wg.Go(func() { outs[i], errs[i] = call() })
	}
	time.Sleep(300 * time.Millisecond) // let them all queue behind the stalled one
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, <-first)
	wg.Wait()
	return firstOut, outs, errs
}

// TestConcurrentAppendsCommitTogether: appends that queue while the
// appending worker is busy commit in one transaction, and each gets its own
// events back, in version order, with the positions the table gave them:
// new keys, new keys with two events, and revocations of existing keys
// (expected version 1).
func TestConcurrentAppendsCommitTogether(t *testing.T) {
	t.Parallel()
	pool := pgtest.PoolFor(t, pgtest.NewDatabase(t), 4)
	b := bundle{pool: pool, store: eventstore.New(pool)}
	ctx := testContext(t)
	var calls []func() ([]domain.Event, error)
	var sent [][]domain.Event
	add := func(expected int64, events ...domain.Event) {
		sent = append(sent, events)
		calls = append(calls, func() ([]domain.Event, error) { return b.store.Append(ctx, expected, events, nil) })
	}
	now := time.Now()
	for range 10 {
		add(0, generated("org-a", domain.NewKeyID(), now))
	}
	for range 5 {
		id := domain.NewKeyID()
		add(0, generated("org-b", id, now), revoked("org-b", id, 2, now))
	}
	for range 5 {
		existing := appendKey(t, b.store, "org-c")
		add(1, revoked("org-c", existing.KeyID, 2, now))
	}
	_, outs, errs := queueBehindAStalledAppend(t, b, calls)

	byID := map[string]ledgerRow{}
	for _, r := range readLedger(t, pool) {
		byID[r.id] = r
	}
	xids := map[uint64]bool{}
	for i := range calls {
		require.NoError(t, errs[i])
		require.Len(t, outs[i], len(sent[i]))
		for j, e := range outs[i] {
			require.Equal(t, sent[i][j].ID, e.ID, "append %d got another append's events", i)
			row, ok := byID[e.ID]
			require.True(t, ok, "append %d: its event is not in the table", i)
			require.Equal(t, row.position, e.Position, "append %d: the position returned is not the table's", i)
			require.Equal(t, row.version, e.StreamVersion)
			if j > 0 {
				require.Greater(t, e.Position, outs[i][j-1].Position, "append %d: its events out of version order", i)
			}
			xids[row.xid] = true
		}
	}
	require.Less(t, len(xids), len(calls)/2, "the queued appends did not share transactions: %d transactions for %d appends", len(xids), len(calls))
	t.Logf("%d appends committed in %d transactions", len(calls), len(xids))
}

// TestAConflictInAGroupFailsOnlyItsOwnAppend: when one append of a group
// breaks a stream's version or reuses a live idempotency key, the group's
// other appends still commit, and each loser gets its own error.
func TestAConflictInAGroupFailsOnlyItsOwnAppend(t *testing.T) {
	t.Parallel()
	pool := pgtest.PoolFor(t, pgtest.NewDatabase(t), 4)
	b := bundle{pool: pool, store: eventstore.New(pool)}
	ctx := testContext(t)
	var calls []func() ([]domain.Event, error)
	for range 16 {
		e := generated("org-a", domain.NewKeyID(), time.Now())
		calls = append(calls, func() ([]domain.Event, error) { return b.store.Append(ctx, 0, []domain.Event{e}, nil) })
	}
	sameKey := domain.NewKeyID()
	for range 2 { // two version 1s of one stream
		e := generated("org-a", sameKey, time.Now())
		calls = append(calls, func() ([]domain.Event, error) { return b.store.Append(ctx, 0, []domain.Event{e}, nil) })
	}
	for range 2 { // two keys under one idempotency key
		e := generated("org-a", domain.NewKeyID(), time.Now())
		idem := &domain.IdempotencyRecord{OrgID: "org-a", Key: "one-request", RequestHash: "h", KeyID: e.KeyID}
		calls = append(calls, func() ([]domain.Event, error) { return b.store.Append(ctx, 0, []domain.Event{e}, idem) })
	}
	reg := prometheus.NewRegistry()
	require.NoError(t, b.store.Register(reg))
	_, _, errs := queueBehindAStalledAppend(t, b, calls)

	require.GreaterOrEqual(t, counterValue(t, reg, "keyledger_append_groups_split_total"), 1.0,
		"no group was split: the conflicting appends were not in one group")
	for i := range 16 {
		require.NoError(t, errs[i], "append %d, in no conflict, failed", i)
	}
	pairOutcome := func(errs []error, want error) {
		t.Helper()
		wins := 0
		for _, err := range errs {
			if err == nil {
				wins++
				continue
			}
			require.True(t, errors.Is(err, want), "got %v, want %v", err, want)
		}
		require.Equal(t, 1, wins)
	}
	pairOutcome(errs[16:18], domain.ErrConflict)
	pairOutcome(errs[18:20], domain.ErrIdempotencyTaken)
	require.Equal(t, 1+16+1+1, countEvents(t, pool))
	require.Equal(t, 1, countIdempotencyKeys(t, pool))
}

// counterValue reads a counter from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}

// lockProbe is a projector whose statement takes an advisory lock for its
// transaction, so that a test holding that lock stalls appends after their
// events are inserted and their positions read.
type lockProbe struct{}

const lockProbeKey = 4242

func (lockProbe) Queue(b *pgx.Batch, _ []domain.Event) error {
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, lockProbeKey)
	return nil
}

// TestAnAppendThatWaitsOnALockRunsAgainInATransactionOfItsOwn: a group whose
// one-round-trip transaction waits on a lock for as long as it may rolls
// back and runs again with BEGIN and COMMIT of its own, where it waits for
// the lock as long as it takes, then commits: once, with the positions the
// table gave its events in that transaction, not the rolled-back one.
func TestAnAppendThatWaitsOnALockRunsAgainInATransactionOfItsOwn(t *testing.T) {
	t.Parallel()
	b := setup(t, lockProbe{})
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	require.NoError(t, b.store.Register(reg))
	e := generated("org-a", domain.NewKeyID(), time.Now())
	tx := begin(t, b.pool)
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockProbeKey)
	require.NoError(t, err)
	done := make(chan error, 1)
	var out []domain.Event
	go func() {
		var err error
		out, err = b.store.Append(ctx, 0, []domain.Event{e}, nil)
		done <- err
	}()
	waitFor(t, "the append to wait on the lock again, in a transaction of its own", func() bool {
		return lockWaiters(t, b.pool) > 0 && counterValue(t, reg, "keyledger_append_lock_waits_total") == 1
	})
	time.Sleep(100 * time.Millisecond) // well past the one-round-trip transaction's lock timeout
	select {
	case err := <-done:
		t.Fatalf("the append gave up waiting on the lock: %v", err)
	default:
	}
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, <-done)
	require.Equal(t, 1.0, counterValue(t, reg, "keyledger_append_lock_waits_total"))
	rows := readLedger(t, b.pool)
	require.Len(t, rows, 1)
	require.Equal(t, e.ID, rows[0].id)
	require.Len(t, out, 1)
	require.Equal(t, rows[0].position, out[0].Position, "the position of the rolled-back attempt")
}

// refusingProjector fails to queue the statements of one key's events, as a
// projector does with an event it cannot read.
type refusingProjector struct{ keyID string }

func (p refusingProjector) Queue(_ *pgx.Batch, events []domain.Event) error {
	for _, e := range events {
		if e.KeyID == p.keyID {
			return errors.New("cannot project " + e.KeyID)
		}
	}
	return nil
}

// TestAnAppendThatCannotBeEncodedFailsOnlyItself: a group whose batch cannot
// be built because of one append (nothing was sent) is tried again one
// append at a time, so that only that append fails.
func TestAnAppendThatCannotBeEncodedFailsOnlyItself(t *testing.T) {
	t.Parallel()
	bad := domain.NewKeyID()
	pool := pgtest.PoolFor(t, pgtest.NewDatabase(t), 4)
	b := bundle{pool: pool, store: eventstore.New(pool, refusingProjector{bad})}
	reg := prometheus.NewRegistry()
	require.NoError(t, b.store.Register(reg))
	ctx := testContext(t)
	var calls []func() ([]domain.Event, error)
	for range 8 {
		e := generated("org-a", domain.NewKeyID(), time.Now())
		calls = append(calls, func() ([]domain.Event, error) { return b.store.Append(ctx, 0, []domain.Event{e}, nil) })
	}
	e := generated("org-a", bad, time.Now())
	calls = append(calls, func() ([]domain.Event, error) { return b.store.Append(ctx, 0, []domain.Event{e}, nil) })
	_, _, errs := queueBehindAStalledAppend(t, b, calls)

	require.GreaterOrEqual(t, counterValue(t, reg, "keyledger_append_groups_split_total"), 1.0)
	for i := range 8 {
		require.NoError(t, errs[i], "append %d, which could be encoded, failed", i)
	}
	require.ErrorContains(t, errs[8], "cannot project "+bad)
	require.Equal(t, 1+8, countEvents(t, pool))
}
