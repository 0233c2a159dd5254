package projections_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections"
)

// fullReplay returns the views a replay of the whole log makes, leaving them
// so.
func fullReplay(t *testing.T, b *bundle) []string {
	t.Helper()
	require.NoError(t, projections.Rebuild(context.Background(), b.pool, nil))
	return dump(t, b.pool)
}

// tailAll reads the whole ledger below the xid8 horizon, as the relay and
// the sealer do.
func tailAll(t *testing.T, ctx context.Context, store *eventstore.Store) []domain.Event {
	t.Helper()
	var all []domain.Event
	var c eventstore.Cursor
	for {
		events, next, err := store.Tail(ctx, c, 1000)
		require.NoError(t, err)
		if len(events) == 0 {
			return all
		}
		all = append(all, events...)
		c = next
	}
}

func workSchemas(t *testing.T, b *bundle) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'keyledger_%'`).Scan(&n))
	return n
}

// TestRebuildAsideDoesNotHoldTheHorizon protects DESIGN 6.1 and 6.5 during a
// rebuild: while the replay is under way (paused between two batches), an
// event committed meanwhile goes below the xid8 horizon, so the relay and
// the sealer (store.Tail) read it while the rebuild is still paused, instead
// of waiting for it to end; and the rebuilt views are still those of a full replay.
func TestRebuildAsideDoesNotHoldTheHorizon(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.populate(t, 40) // 40 generated, 14 revoked: 54 events, 6 batches of 10

	calls := 0
	var made string
	var tailed bool
	err := projections.RebuildAsideWith(ctx, b.pool, 10, 5*time.Second, func(n int) {
		calls++
		if calls != 2 {
			return
		}
		// Mid-replay: more batches remain to read and write.
		opCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		g, err := b.ledger.GenerateKey(opCtx, domain.GenerateKey{OrgID: "acme", Name: "made-mid-replay"}, "")
		if err != nil {
			t.Errorf("generate during the rebuild: %v", err)
			return
		}
		made = g.Key.ID
		// The horizon is the server's: a transaction of another test, on
		// another database, can hold it for a moment, but not for seconds.
		// A rebuild that held it would hold it for as long as this pause.
		for deadline := time.Now().Add(5 * time.Second); !tailed && time.Now().Before(deadline); {
			for _, e := range tailAll(t, opCtx, b.store) {
				if e.KeyID == made {
					tailed = true
				}
			}
			if !tailed {
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	require.NoError(t, err)
	require.GreaterOrEqual(t, calls, 5, "the replay was paused mid-way")
	require.NotEmpty(t, made)
	require.True(t, tailed, "an event committed during the replay is read by Tail while the replay is paused: the rebuild holds no transaction id")

	after := dump(t, b.pool)
	k, err := b.views.GetKey(ctx, "acme", made)
	require.NoError(t, err, "the key generated during the replay is in the new views")
	require.Equal(t, "made-mid-replay", k.Name)
	require.Equal(t, fullReplay(t, b), after, "the swapped-in views are those a full replay makes")
	require.Zero(t, workSchemas(t, b))
}

// TestRebuildAsideRunsOneAtATime: a second rebuild started while one runs
// fails at once, and leaves the first one's work alone, which then swaps in
// whole views.
func TestRebuildAsideRunsOneAtATime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.populate(t, 40)
	want := fullReplay(t, b)

	paused, resume := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		calls := 0
		first <- projections.RebuildAsideWith(ctx, b.pool, 10, 5*time.Second, func(int) {
			if calls++; calls == 2 {
				close(paused)
				<-resume
			}
		})
	}()
	select {
	case <-paused:
	case err := <-first:
		t.Fatalf("the first rebuild ended before its pause: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the first rebuild did not reach its pause")
	}

	secondCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	start := time.Now()
	err := projections.RebuildAside(secondCtx, b.pool, nil)
	require.Error(t, err)
	require.True(t, errors.Is(err, projections.ErrRebuildRunning), "got %v", err)
	require.Contains(t, err.Error(), "another views rebuild is running")
	require.Less(t, time.Since(start), 2*time.Second, "the second run fails at once")
	require.NoError(t, secondCtx.Err())

	close(resume)
	require.NoError(t, <-first)
	require.Equal(t, want, dump(t, b.pool), "the first run swapped in whole views")
	require.Zero(t, workSchemas(t, b))

	// The lock went with the first run.
	require.NoError(t, projections.RebuildAside(ctx, b.pool, nil))
	require.Equal(t, want, dump(t, b.pool))
}

// TestRebuildAsideSwapGivesUpWhenTheViewsStayLocked: a transaction that keeps
// the views locked makes the swap fail after its lock timeout, with a clear
// error, the live views untouched and no work left behind; once it ends, a
// rebuild swaps.
func TestRebuildAsideSwapGivesUpWhenTheViewsStayLocked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.populate(t, 20)
	before := dump(t, b.pool)
	oid := func() uint32 {
		var o uint32
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT 'key_list'::regclass::oid`).Scan(&o))
		return o
	}
	liveOid := oid()

	holder, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	var n int
	require.NoError(t, holder.QueryRow(ctx, `SELECT count(*) FROM key_list`).Scan(&n))

	start := time.Now()
	err = projections.RebuildAsideWith(ctx, b.pool, 10, 300*time.Millisecond, nil)
	require.Error(t, err)
	require.True(t, errors.Is(err, projections.ErrSwapBusy), "got %v", err)
	require.Contains(t, err.Error(), "nothing was swapped")
	require.Less(t, time.Since(start), 10*time.Second)
	require.NoError(t, holder.Rollback(ctx))

	require.Equal(t, liveOid, oid(), "the live views were not swapped")
	require.Equal(t, before, dump(t, b.pool))
	require.Zero(t, workSchemas(t, b), "the new tables were dropped")

	require.NoError(t, projections.RebuildAsideWith(ctx, b.pool, 10, 300*time.Millisecond, nil))
	require.NotEqual(t, liveOid, oid(), "swapped")
	require.Equal(t, before, dump(t, b.pool))
}

// TestRebuildAsideLateEventsUseTheLedgerIndex: under the views' locks the
// swap finds the events committed after the snapshot through the
// (transaction_id, position) index, not by reading the whole events table.
func TestRebuildAsideLateEventsUseTheLedgerIndex(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.populate(t, 10)
	var snapshot string
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snapshot))
	var plan []string
	require.NoError(t, pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `EXPLAIN `+strings.Replace(projections.LateEvents, "$1", "'"+snapshot+"'", -1))
		if err != nil {
			return err
		}
		plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	}))
	text := strings.Join(plan, "\n")
	require.Contains(t, text, "events_ledger_order", text)
	require.NotContains(t, text, "Seq Scan", text)

	// And it finds exactly what the snapshot does not see.
	g, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: "late"}, "")
	require.NoError(t, err)
	rows, err := b.pool.Query(ctx, projections.LateEvents, snapshot)
	require.NoError(t, err)
	late, err := eventstore.ScanEventRows(rows)
	require.NoError(t, err)
	require.Len(t, late, 1)
	require.Equal(t, g.Key.ID, late[0].KeyID)
}

// TestRebuildAsideRefusesASchemaThatChangedMeanwhile: a migration that adds
// a column to the live views while a rebuild replays (the new tables were
// made like the old ones) makes the swap fail, the live views kept; a new
// run rebuilds them with the column.
func TestRebuildAsideRefusesASchemaThatChangedMeanwhile(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.populate(t, 20)
	var migrated bool
	err := projections.RebuildAsideWith(ctx, b.pool, 5, 5*time.Second, func(int) {
		if !migrated {
			migrated = true
			_, err := b.pool.Exec(ctx, `ALTER TABLE key_list ADD COLUMN note text NOT NULL DEFAULT 'migrated'`)
			require.NoError(t, err)
		}
	})
	require.ErrorIs(t, err, projections.ErrSchemaChanged)
	require.Contains(t, err.Error(), "nothing was swapped")
	require.Zero(t, workSchemas(t, b), "the new tables were dropped")
	before := dump(t, b.pool)
	require.Contains(t, before[0], "migrated", "the live views, with their new column, are in place")

	require.NoError(t, projections.RebuildAsideWith(ctx, b.pool, 5, 5*time.Second, nil))
	require.Equal(t, before, dump(t, b.pool))
}
