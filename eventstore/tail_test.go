package eventstore_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// slowCommitter is an inline projector that holds about one appending
// transaction in eight open for a few milliseconds after its inserts, so that
// transactions commit in another order than the one in which they took their
// positions.
type slowCommitter struct{}

func (slowCommitter) Queue(b *pgx.Batch, _ []domain.Event) error {
	if rand.IntN(8) == 0 {
		b.Queue(`SELECT pg_sleep($1)`, float64(rand.IntN(4000))/1e6)
	}
	return nil
}

// TestTailNeverSkipsAnEventUnderConcurrentWriters is the proof of DESIGN 6.2:
// while many transactions commit out of order, a reader tailing the ledger
// sees every committed event exactly once, in ledger order, and each stream
// in version order.
func TestTailNeverSkipsAnEventUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	const (
		writers         = 16
		eventsPerWriter = 200
		handWrites      = 4
	)
	pool := pgtest.PoolFor(t, pgtest.NewDatabase(t), writers+4)
	writeStore := eventstore.New(pool, slowCommitter{})
	reader := eventstore.New(pool)
	ctx := testContext(t)

	var handDone atomic.Bool
	errs := make(chan error, writers+1)
	var wg sync.WaitGroup

	// The store's writers: fresh streams, one or two events per append, in
	// one or two transactions.
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			org := fmt.Sprintf("org-%d", w%3)
			for written := 0; written < eventsPerWriter || !handDone.Load(); {
				keyID := domain.NewKeyID()
				now := time.Now()
				var err error
				switch rand.IntN(3) {
				case 0:
					_, err = writeStore.Append(ctx, 0, []domain.Event{generated(org, keyID, now)}, nil)
					written++
				case 1:
					if _, err = writeStore.Append(ctx, 0, []domain.Event{generated(org, keyID, now)}, nil); err == nil {
						_, err = writeStore.Append(ctx, 1, []domain.Event{revoked(org, keyID, 2, now)}, nil)
					}
					written += 2
				default:
					_, err = writeStore.Append(ctx, 0, []domain.Event{generated(org, keyID, now), revoked(org, keyID, 2, now)}, nil)
					written += 2
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}

	// A writer that holds its transaction open for 200 ms around a raw
	// insert. Half the time it takes its transaction id before the others
	// insert and its position after them, half the time the other way round.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer handDone.Store(true)
		for i := range handWrites {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if i%2 == 0 {
					if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
						return err
					}
					time.Sleep(100 * time.Millisecond)
				}
				keyID := domain.NewKeyID()
				if _, err := tx.Exec(ctx, `INSERT INTO events (id, org_id, key_id, stream_version, type, actor, occurred_at, data)
					VALUES ($1, 'org-hand', $2, 1, 'key.revoked', 'raw-writer', now(), jsonb_build_object('key_id', $2::text))`,
					domain.NewEventID(), keyID); err != nil {
					return err
				}
				time.Sleep(200 * time.Millisecond)
				return nil
			})
			if err != nil {
				errs <- err
				return
			}
		}
	}()

	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()

	// The tailer, until the writers are done and it has caught up.
	var (
		seen            []domain.Event
		calls           []tailCall
		cursor          eventstore.Cursor
		total           = -1
		seenWhileWrites int
	)
	t.Cleanup(func() {
		if t.Failed() {
			explainTail(t, calls, readLedger(t, pool))
		}
	})
	deadline := time.Now().Add(40 * time.Second)
	for total < 0 || len(seen) < total {
		require.True(t, time.Now().Before(deadline),
			"the tailer did not catch up: saw %d of %d events (a long transaction elsewhere on the server holds the horizon back?)", len(seen), total)
		events, next, err := reader.Tail(ctx, cursor, 100)
		require.NoError(t, err)
		require.LessOrEqual(t, len(events), 100)
		if len(events) == 0 {
			require.Equal(t, cursor, next, "an empty read keeps the cursor")
		} else {
			c := tailCall{after: cursor, next: next}
			for _, e := range events {
				c.ids = append(c.ids, e.ID)
			}
			calls = append(calls, c)
		}
		seen = append(seen, events...)
		cursor = next
		select {
		case <-writersDone:
			if total < 0 {
				total = countEvents(t, pool)
			}
		default:
			seenWhileWrites = len(seen)
		}
		if len(events) == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	events, next, err := reader.Tail(ctx, cursor, 100)
	require.NoError(t, err)
	require.Empty(t, events, "nothing beyond the end of the ledger")
	require.Equal(t, cursor, next)

	require.GreaterOrEqual(t, total, writers*eventsPerWriter+handWrites)
	// Other tests' transactions hold the cluster-wide horizon back too, so
	// on a busy server the tailer may read little before the writers end.
	t.Logf("the tailer read %d events while the writers wrote", seenWhileWrites)

	// Every committed event, read with a plain SELECT, was seen exactly once
	// and in ledger order.
	ledger := readLedger(t, pool)
	require.Len(t, ledger, total)
	require.Len(t, seen, len(ledger))
	byID := make(map[string]ledgerRow, len(ledger))
	for _, r := range ledger {
		byID[r.id] = r
	}
	var (
		prev        ledgerRow
		maxPosition int64
		late        int // events a reader ordering by position alone would skip
		versions    = map[string]int64{}
		seenIDs     = map[string]bool{}
	)
	for i, e := range seen {
		r, ok := byID[e.ID]
		require.True(t, ok, "the tailer returned an event that is not in the table")
		require.False(t, seenIDs[e.ID], "event %s seen twice", e.ID)
		seenIDs[e.ID] = true
		require.Equal(t, r.position, e.Position)
		require.Equal(t, ledger[i].id, e.ID, "event %d out of ledger order", i)
		if i > 0 {
			require.True(t, r.xid > prev.xid || r.xid == prev.xid && r.position > prev.position,
				"cursor order broken at %d: (%d, %d) after (%d, %d)", i, r.xid, r.position, prev.xid, prev.position)
		}
		prev = r
		if e.Position < maxPosition {
			late++
		}
		maxPosition = max(maxPosition, e.Position)
		require.Equal(t, versions[e.KeyID]+1, e.StreamVersion, "stream %s out of version order", e.KeyID)
		versions[e.KeyID] = e.StreamVersion
	}
	require.Positive(t, late, "the run produced no late commit with a lower position; it proved nothing")
	t.Logf("%d events, %d of them behind a higher position already read", len(seen), late)
}

// tailCall records one Tail call that returned events, to explain a failure.
type tailCall struct {
	after, next eventstore.Cursor
	ids         []string
}

// explainTail logs the first Tail call whose answer breaks ledger order: an
// event at or before the cursor it was given, events out of order, a cursor
// that is not the last event's, or an event that the table holds between
// the cursor and the last event returned but that the call left out.
func explainTail(t *testing.T, calls []tailCall, ledger []ledgerRow) {
	t.Helper()
	byID := make(map[string]ledgerRow, len(ledger))
	for _, r := range ledger {
		byID[r.id] = r
	}
	less := func(x uint64, p int64, c eventstore.Cursor) bool {
		return x < c.Xid || x == c.Xid && p < c.Position
	}
	for i, c := range calls {
		var rows []string
		prev := c.after
		var problem string
		for _, id := range c.ids {
			r, ok := byID[id]
			switch {
			case !ok:
				problem = "an event that is not in the table"
			case !less(prev.Xid, prev.Position, eventstore.Cursor{Xid: r.xid, Position: r.position}):
				problem = "an event at or before the previous one (or the cursor)"
			}
			prev = eventstore.Cursor{Xid: r.xid, Position: r.position}
			rows = append(rows, fmt.Sprintf("(%d,%d)", r.xid, r.position))
		}
		if problem == "" && prev != c.next {
			problem = fmt.Sprintf("a next cursor %+v that is not the last event's", c.next)
		}
		if problem == "" && len(c.ids) > 0 {
			left := 0
			for _, r := range ledger {
				if less(c.after.Xid, c.after.Position, eventstore.Cursor{Xid: r.xid, Position: r.position}) &&
					less(r.xid, r.position, prev) {
					left++
				}
			}
			if left > len(c.ids)-1 {
				problem = fmt.Sprintf("%d committed events left out before its last one: a skip", left-(len(c.ids)-1))
			}
		}
		if problem != "" {
			t.Logf("Tail call %d of %d after (%d,%d) returned %s: %v", i, len(calls), c.after.Xid, c.after.Position, problem, rows)
			return
		}
	}
	t.Logf("no single Tail call broke ledger order (%d calls)", len(calls))
}

// TestTailWaitsForAnOpenTransaction is the deterministic case of DESIGN 6.2:
// while a transaction that wrote is open, the tailer returns nothing after
// it, even events that committed meanwhile; once it commits, the tailer
// returns it and what came after, in (xid, position) order, skipping
// nothing.
func TestTailWaitsForAnOpenTransaction(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// xidFirst makes A take its transaction id before B and its
		// position after B.
		xidFirst bool
	}{
		{name: "LowerPositionCommitsLast"},
		{name: "LowerXidHigherPositionCommitsLast", xidFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := testContext(t)

			// C is committed before A and B start.
			c := appendKey(t, b.store, "org-a")
			var cursor eventstore.Cursor
			waitFor(t, "the tailer to return the committed event", func() bool {
				events, next, err := b.store.Tail(ctx, eventstore.Cursor{}, 100)
				require.NoError(t, err)
				cursor = next
				return len(events) == 1 && events[0].ID == c.ID
			})

			txA := begin(t, b.pool)
			var a ledgerRow
			if tc.xidFirst {
				_, err := txA.Exec(ctx, `SELECT pg_current_xact_id()`)
				require.NoError(t, err)
			} else {
				a = rawInsert(t, ctx, txA, "org-a", domain.NewKeyID(), 1)
			}

			txB := begin(t, b.pool)
			bRow := rawInsert(t, ctx, txB, "org-a", domain.NewKeyID(), 1)
			require.NoError(t, txB.Commit(ctx))

			if tc.xidFirst {
				a = rawInsert(t, ctx, txA, "org-a", domain.NewKeyID(), 1)
				require.Greater(t, a.position, bRow.position)
			} else {
				require.Less(t, a.position, bRow.position)
			}
			require.Less(t, a.xid, bRow.xid)

			// B is committed and visible to a plain read ...
			loaded, err := b.store.Load(ctx, "org-a", bRow.keyID)
			require.NoError(t, err)
			require.Len(t, loaded, 1)
			// ... but the tailer must not return it while A is open.
			for range 5 {
				events, next, err := b.store.Tail(ctx, cursor, 100)
				require.NoError(t, err)
				require.Empty(t, events, "Tail returned an event past an open transaction")
				require.Equal(t, cursor, next)
				events, _, err = b.store.OrgEvents(ctx, "org-a", cursor, 100)
				require.NoError(t, err)
				require.Empty(t, events, "OrgEvents returned an event past an open transaction")
			}

			require.NoError(t, txA.Commit(ctx))

			// Now A, then B, one page at a time.
			var got []domain.Event
			waitFor(t, "the tailer to return A and B", func() bool {
				events, next, err := b.store.Tail(ctx, cursor, 1)
				require.NoError(t, err)
				got = append(got, events...)
				cursor = next
				return len(got) >= 2
			})
			require.Len(t, got, 2)
			require.Equal(t, a.id, got[0].ID)
			require.Equal(t, a.position, got[0].Position)
			require.Equal(t, bRow.id, got[1].ID)
			require.Equal(t, bRow.position, got[1].Position)

			events, _, err := b.store.Tail(ctx, cursor, 100)
			require.NoError(t, err)
			require.Empty(t, events)
		})
	}
}

// TestTailIgnoresRolledBackTransactions checks that an aborted writer holds
// the reader back only while it is open, and leaves no trace.
func TestTailIgnoresRolledBackTransactions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	tx := begin(t, b.pool)
	rawInsert(t, ctx, tx, "org-a", domain.NewKeyID(), 1)
	after := appendKey(t, b.store, "org-a")
	events, _, err := b.store.Tail(ctx, eventstore.Cursor{}, 100)
	require.NoError(t, err)
	require.Empty(t, events)
	require.NoError(t, tx.Rollback(ctx))

	waitFor(t, "the tailer to pass the rolled-back transaction", func() bool {
		events, _, err = b.store.Tail(ctx, eventstore.Cursor{}, 100)
		require.NoError(t, err)
		return len(events) > 0
	})
	require.Len(t, events, 1)
	require.Equal(t, after.ID, events[0].ID)
}

// TestTailOrdersByTransactionIDNumerically protects ledger order where
// transaction ids gain a digit: xid 9 comes before xid 10, whereas their text
// sorts the other way, which once made a tail skip the event of xid 9.
func TestTailOrdersByTransactionIDNumerically(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	for _, xid := range []string{"10", "9"} {
		e := generated("org-x", domain.NewKeyID(), time.Now())
		_, err := b.pool.Exec(ctx, `INSERT INTO events (transaction_id, id, org_id, key_id, stream_version, type, actor, occurred_at, data)
			VALUES ($1::text::xid8, $2, $3, $4, 1, $5, $6, $7, '{}')`, xid, e.ID, e.OrgID, e.KeyID, e.Type, e.Actor, e.OccurredAt)
		require.NoError(t, err)
	}
	events, _, err := b.store.Tail(ctx, eventstore.Cursor{}, 1)
	require.NoError(t, err)
	require.Len(t, events, 1)
	raw, _, err := b.store.TailRaw(ctx, eventstore.Cursor{}, 2)
	require.NoError(t, err)
	require.Len(t, raw, 2)
	require.EqualValues(t, 9, raw[0].Cursor.Xid, "xid 9 first")
	require.EqualValues(t, 10, raw[1].Cursor.Xid)
	require.Equal(t, raw[0].ID, events[0].ID)
	org, _, err := b.store.OrgEvents(ctx, "org-x", eventstore.Cursor{}, 1)
	require.NoError(t, err)
	require.Equal(t, raw[0].ID, org[0].ID)
}

// TestTailRunsItsGenericPlanWithoutChangingTheConnection: Tail and Behind
// run their statements with the generic plan only (pg_prepared_statements
// counts no custom plan), set plan_cache_mode for their own implicit
// transaction only (the pooled connection they ran on, the pool's only one,
// plans as before afterwards), and still answer right.
func TestTailRunsItsGenericPlanWithoutChangingTheConnection(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	pool := pgtest.PoolFor(t, url, 1)
	store := eventstore.New(pool)
	ctx := testContext(t)

	var before string
	require.NoError(t, pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&before))
	var want []string
	for range 3 {
		want = append(want, appendKey(t, store, "org-a").ID)
	}
	// Past the five runs after which Postgres may settle on a plan. A
	// transaction of another test, open on the server, can hold the
	// horizon for a while: a tail then finds only the events before it.
	full := 0
	waitFor(t, "seven tails of every event", func() bool {
		events, _, err := store.Tail(ctx, eventstore.Cursor{}, 100)
		require.NoError(t, err)
		got := []string{}
		for _, e := range events {
			got = append(got, e.ID)
		}
		require.Equal(t, want[:len(got)], got)
		if len(got) == len(want) {
			full++
		}
		n, _, err := store.Behind(ctx, eventstore.Cursor{}, 100)
		require.NoError(t, err)
		require.Equal(t, 3, n)
		return full >= 7
	})
	// The one connection ran the readers' statements with their generic
	// plans only, and plans as before afterwards.
	var generic, custom int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
		FROM pg_prepared_statements WHERE statement LIKE '%FROM events%'`).Scan(&generic, &custom))
	require.GreaterOrEqual(t, generic, int64(14))
	require.Zero(t, custom)
	var after string
	require.NoError(t, pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&after))
	require.Equal(t, before, after)
	require.NotEqual(t, "force_generic_plan", after)
}
