package eventstore_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// TestStoreConformsToEventStore runs the domain.EventStore contract against
// the Postgres store.
func TestStoreConformsToEventStore(t *testing.T) {
	t.Parallel()
	eventStoreConformance(t, func(t *testing.T) domain.EventStore {
		return eventstore.New(pgtest.NewPool(t))
	})
}

// eventStoreConformance is the contract every domain.EventStore keeps.
// newStore must return a store that holds no events.
func eventStoreConformance(t *testing.T, newStore func(t *testing.T) domain.EventStore) {
	t.Run("AppendThenLoadRoundTripsEveryField", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)

		// A time with nanoseconds in a zone other than UTC: the store keeps
		// microseconds and gives it back in UTC.
		at := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.FixedZone("IST", 5*3600+1800))
		expires := domain.Truncate(at.Add(90 * 24 * time.Hour))
		keyID := domain.NewKeyID()
		gen := generated("org-a", keyID, time.Time{})
		gen.OccurredAt = at
		data := gen.Data.(domain.KeyGenerated)
		data.Name = `name with "quotes", üñíçødé and a \ backslash`
		data.ExpiresAt = &expires
		gen.Data = data

		out, err := store.Append(ctx, 0, []domain.Event{gen}, nil)
		require.NoError(t, err)
		require.Len(t, out, 1)
		require.Positive(t, out[0].Position, "Append sets the position")
		require.Zero(t, gen.Position, "Append does not change its argument")

		rev := revoked("org-a", keyID, 2, at.Add(time.Minute))
		out2, err := store.Append(ctx, 1, []domain.Event{rev}, nil)
		require.NoError(t, err)
		require.Len(t, out2, 1)
		require.Greater(t, out2[0].Position, out[0].Position)

		loaded, err := store.Load(ctx, "org-a", keyID)
		require.NoError(t, err)
		require.Len(t, loaded, 2)

		for i, want := range []domain.Event{gen, rev} {
			got := loaded[i]
			want.OccurredAt = domain.Truncate(want.OccurredAt)
			want.Position = []int64{out[0].Position, out2[0].Position}[i]
			requireSameEvent(t, want, got)
			require.Equal(t, time.UTC, got.OccurredAt.Location(), "occurred_at is read back in UTC")
			require.Zero(t, got.OccurredAt.Nanosecond()%1000, "occurred_at has microsecond precision")
		}
		gotData, ok := loaded[0].Data.(domain.KeyGenerated)
		require.True(t, ok, "data decodes to the typed struct, got %T", loaded[0].Data)
		require.NotNil(t, gotData.ExpiresAt)
		require.True(t, expires.Equal(*gotData.ExpiresAt))
		_, ok = loaded[1].Data.(domain.KeyRevoked)
		require.True(t, ok, "data decodes to the typed struct, got %T", loaded[1].Data)

		// The aggregate folds what Load returns.
		k := domain.KeyFromEvents(loaded)
		require.Equal(t, int64(2), k.Version)
		require.Equal(t, data.Name, k.Name)
		require.NotNil(t, k.RevokedAt)
	})

	t.Run("AppendOfSeveralEventsCommitsThemTogetherInOrder", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		keyID := domain.NewKeyID()
		now := time.Now()
		out, err := store.Append(ctx, 0, []domain.Event{generated("org-a", keyID, now), revoked("org-a", keyID, 2, now)}, nil)
		require.NoError(t, err)
		require.Len(t, out, 2)
		require.Positive(t, out[0].Position)
		require.Greater(t, out[1].Position, out[0].Position)

		loaded, err := store.Load(ctx, "org-a", keyID)
		require.NoError(t, err)
		require.Len(t, loaded, 2)
		requireSameEvent(t, out[0], loaded[0])
		requireSameEvent(t, out[1], loaded[1])
	})

	t.Run("AppendRefusesEventsThatAreNotTheStreamsNextVersions", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		keyID := domain.NewKeyID()
		now := time.Now()
		for name, events := range map[string][]domain.Event{
			"gap":         {generated("org-a", keyID, now), revoked("org-a", keyID, 3, now)},
			"two streams": {generated("org-a", keyID, now), revoked("org-a", domain.NewKeyID(), 2, now)},
			"wrong start": {revoked("org-a", keyID, 2, now)},
		} {
			_, err := store.Append(ctx, 0, events, nil)
			require.Error(t, err, name)
		}
		loaded, err := store.Load(ctx, "org-a", keyID)
		require.NoError(t, err)
		require.Empty(t, loaded, "a refused append writes nothing")

		out, err := store.Append(ctx, 0, nil, nil)
		require.NoError(t, err, "appending nothing is not an error")
		require.Empty(t, out)
	})

	t.Run("LoadOfAnUnknownKeyReturnsNothing", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		loaded, err := store.Load(testContext(t), "org-a", domain.NewKeyID())
		require.NoError(t, err)
		require.Empty(t, loaded)
	})

	t.Run("LoadOfAnotherOrganizationsKeyReturnsNothing", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		e := appendKey(t, store, "org-a")
		appendKey(t, store, "org-b")

		loaded, err := store.Load(ctx, "org-b", e.KeyID)
		require.NoError(t, err)
		require.Empty(t, loaded, "org-b must not see org-a's key")

		loaded, err = store.Load(ctx, "org-a", e.KeyID)
		require.NoError(t, err)
		require.Len(t, loaded, 1)
		require.Equal(t, "org-a", loaded[0].OrgID)
	})

	t.Run("AppendWithAStaleExpectedVersionIsAConflict", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		first := appendKey(t, store, "org-a")
		keyID := first.KeyID

		// Another generate of the same key (expected 0) and a revoke that
		// thinks the stream is further on than it is.
		for _, tc := range []struct {
			expected int64
			event    domain.Event
		}{
			{0, generated("org-a", keyID, time.Now())},
			{2, revoked("org-a", keyID, 3, time.Now())},
		} {
			_, err := store.Append(ctx, tc.expected, []domain.Event{tc.event}, nil)
			require.Error(t, err)
			require.True(t, errors.Is(err, domain.ErrConflict), "errors.Is(%v, ErrConflict)", err)
			require.Equal(t, domain.EConflict, domain.ErrorCode(err))
		}

		_, err := store.Append(ctx, 1, []domain.Event{revoked("org-a", keyID, 2, time.Now())}, nil)
		require.NoError(t, err)
		// Now version 1 is stale.
		_, err = store.Append(ctx, 1, []domain.Event{revoked("org-a", keyID, 2, time.Now())}, nil)
		require.ErrorIs(t, err, domain.ErrConflict)
		require.Equal(t, domain.EConflict, domain.ErrorCode(err))

		loaded, err := store.Load(ctx, "org-a", keyID)
		require.NoError(t, err)
		require.Len(t, loaded, 2)
		require.Equal(t, first.ID, loaded[0].ID)
	})

	t.Run("RacingAppendsToOneStreamHaveExactlyOneWinner", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		const racers = 16
		for round := 0; round < 3; round++ {
			first := appendKey(t, store, "org-a")
			events := make([]domain.Event, racers)
			errs := make([]error, racers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range racers {
				events[i] = revoked("org-a", first.KeyID, 2, time.Now())
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, errs[i] = store.Append(ctx, 1, events[i:i+1], nil)
				}()
			}
			close(start)
			wg.Wait()

			winner := -1
			for i, err := range errs {
				if err == nil {
					require.Equal(t, -1, winner, "two appends of version 2 succeeded")
					winner = i
					continue
				}
				require.ErrorIs(t, err, domain.ErrConflict)
				require.Equal(t, domain.EConflict, domain.ErrorCode(err), "loser %d: %v", i, err)
			}
			require.NotEqual(t, -1, winner, "no append succeeded")

			loaded, err := store.Load(ctx, "org-a", first.KeyID)
			require.NoError(t, err)
			require.Len(t, loaded, 2, "the stream holds exactly one version 2")
			require.Equal(t, events[winner].ID, loaded[1].ID, "the stored version 2 is the winner's")
		}
	})

	t.Run("AppendWithATakenIdempotencyKeyCommitsNothing", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		before := time.Now().Add(-time.Minute)

		e1 := generated("org-a", domain.NewKeyID(), time.Now())
		rec1 := &domain.IdempotencyRecord{OrgID: "org-a", Key: "idem-1", RequestHash: "hash-1", KeyID: e1.KeyID}
		_, err := store.Append(ctx, 0, []domain.Event{e1}, rec1)
		require.NoError(t, err)

		got, ok, err := store.LookupIdempotency(ctx, "org-a", "idem-1", before)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, *rec1, got)

		// The same (org, key) again, for another key and request.
		e2 := generated("org-a", domain.NewKeyID(), time.Now())
		rec2 := &domain.IdempotencyRecord{OrgID: "org-a", Key: "idem-1", RequestHash: "hash-2", KeyID: e2.KeyID}
		_, err = store.Append(ctx, 0, []domain.Event{e2}, rec2)
		require.ErrorIs(t, err, domain.ErrIdempotencyTaken)

		loaded, err := store.Load(ctx, "org-a", e2.KeyID)
		require.NoError(t, err)
		require.Empty(t, loaded, "no event is committed with a taken idempotency key")
		got, ok, err = store.LookupIdempotency(ctx, "org-a", "idem-1", before)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, *rec1, got, "the first record stands")

		// The window: a record is found from a time before it was made, not
		// from one after.
		_, ok, err = store.LookupIdempotency(ctx, "org-a", "idem-1", time.Now().Add(time.Hour))
		require.NoError(t, err)
		require.False(t, ok, "since in the future finds nothing")

		// Idempotency keys belong to an organization.
		_, ok, err = store.LookupIdempotency(ctx, "org-b", "idem-1", before)
		require.NoError(t, err)
		require.False(t, ok, "another organization's idempotency key is not found")
		e3 := generated("org-b", domain.NewKeyID(), time.Now())
		rec3 := &domain.IdempotencyRecord{OrgID: "org-b", Key: "idem-1", RequestHash: "hash-3", KeyID: e3.KeyID}
		_, err = store.Append(ctx, 0, []domain.Event{e3}, rec3)
		require.NoError(t, err, "the same idempotency key in another organization is free")

		_, ok, err = store.LookupIdempotency(ctx, "org-a", "never-used", before)
		require.NoError(t, err)
		require.False(t, ok)
	})

	t.Run("RacingAppendsWithOneIdempotencyKeyHaveExactlyOneWinner", func(t *testing.T) {
		t.Parallel()
		store := newStore(t)
		ctx := testContext(t)
		const racers = 8
		events := make([]domain.Event, racers)
		errs := make([]error, racers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range racers {
			events[i] = generated("org-a", domain.NewKeyID(), time.Now())
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = store.Append(ctx, 0, events[i:i+1], &domain.IdempotencyRecord{
					OrgID: "org-a", Key: "same", RequestHash: "h", KeyID: events[i].KeyID,
				})
			}()
		}
		close(start)
		wg.Wait()

		winner := -1
		for i, err := range errs {
			if err == nil {
				require.Equal(t, -1, winner, "two appends with one idempotency key succeeded")
				winner = i
				continue
			}
			require.ErrorIs(t, err, domain.ErrIdempotencyTaken)
		}
		require.NotEqual(t, -1, winner)
		for i, e := range events {
			loaded, err := store.Load(ctx, "org-a", e.KeyID)
			require.NoError(t, err)
			if i == winner {
				require.Len(t, loaded, 1)
			} else {
				require.Empty(t, loaded, "loser %d committed an event", i)
			}
		}
		rec, ok, err := store.LookupIdempotency(ctx, "org-a", "same", time.Now().Add(-time.Hour))
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, events[winner].KeyID, rec.KeyID)
	})
}

// TestAppendMapsTheUniqueViolationToConflict forces the second conflict path:
// the version check passes (the competing version 2 is not committed yet),
// the insert then waits on the (key_id, stream_version) index and fails with
// a unique violation when the competitor commits. It must be the same
// domain.ErrConflict as the version check gives, and leave nothing behind.
func TestAppendMapsTheUniqueViolationToConflict(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	first := appendKey(t, b.store, "org-a")

	tx := begin(t, b.pool)
	competitor := rawInsert(t, ctx, tx, "org-a", first.KeyID, 2)

	mine := revoked("org-a", first.KeyID, 2, time.Now())
	done := make(chan error, 1)
	go func() {
		_, err := b.store.Append(ctx, 1, []domain.Event{mine}, &domain.IdempotencyRecord{
			OrgID: "org-a", Key: "revoke-1", RequestHash: "h", KeyID: first.KeyID,
		})
		done <- err
	}()
	waitForLockWaiter(t, b.pool) // the append passed its version check and waits on the index
	require.NoError(t, tx.Commit(ctx))

	err := <-done
	require.Error(t, err)
	require.True(t, errors.Is(err, domain.ErrConflict), "errors.Is(%v, ErrConflict)", err)
	require.Equal(t, domain.EConflict, domain.ErrorCode(err))

	var n int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE key_id = $1 AND stream_version = 2`, first.KeyID).Scan(&n))
	require.Equal(t, 1, n, "the table holds exactly one version 2")
	rows := readLedger(t, b.pool)
	require.Len(t, rows, 2)
	require.Equal(t, competitor.id, rows[1].id)
	require.Zero(t, countIdempotencyKeys(t, b.pool), "the loser's idempotency record is rolled back")
}

// TestRacingAppendsLeaveOneVersionInTheTable races many transactions on one
// stream version and checks the table itself, not only what Load shows.
func TestRacingAppendsLeaveOneVersionInTheTable(t *testing.T) {
	t.Parallel()
	pool := pgtest.PoolFor(t, pgtest.NewDatabase(t), 16)
	store := eventstore.New(pool)
	ctx := testContext(t)
	first := appendKey(t, store, "org-a")

	const racers = 24
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, racers)
	for range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := store.Append(ctx, 1, []domain.Event{revoked("org-a", first.KeyID, 2, time.Now())}, nil)
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	wins := 0
	for err := range errs {
		if err == nil {
			wins++
			continue
		}
		require.ErrorIs(t, err, domain.ErrConflict)
		require.Equal(t, domain.EConflict, domain.ErrorCode(err))
	}
	require.Equal(t, 1, wins)

	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE key_id = $1 AND stream_version = 2`, first.KeyID).Scan(&n))
	require.Equal(t, 1, n)
	require.Equal(t, 2, countEvents(t, pool))
}

// TestAppendTakesOverAnExpiredIdempotencyKey checks the window from the
// other side: a record older than domain.IdempotencyWindow no longer
// protects anything, and a new request may claim its key.
func TestAppendTakesOverAnExpiredIdempotencyKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	e1 := generated("org-a", domain.NewKeyID(), time.Now())
	_, err := b.store.Append(ctx, 0, []domain.Event{e1}, &domain.IdempotencyRecord{OrgID: "org-a", Key: "k", RequestHash: "h1", KeyID: e1.KeyID})
	require.NoError(t, err)

	// Just inside the window, the key is still taken.
	_, err = b.pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes'`)
	require.NoError(t, err)
	e2 := generated("org-a", domain.NewKeyID(), time.Now())
	_, err = b.store.Append(ctx, 0, []domain.Event{e2}, &domain.IdempotencyRecord{OrgID: "org-a", Key: "k", RequestHash: "h2", KeyID: e2.KeyID})
	require.ErrorIs(t, err, domain.ErrIdempotencyTaken)

	// Past the window, it is free again.
	_, err = b.pool.Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 minute'`)
	require.NoError(t, err)
	_, ok, err := b.store.LookupIdempotency(ctx, "org-a", "k", time.Now().Add(-domain.IdempotencyWindow))
	require.NoError(t, err)
	require.False(t, ok, "an expired record is outside the lookup window")
	_, err = b.store.Append(ctx, 0, []domain.Event{e2}, &domain.IdempotencyRecord{OrgID: "org-a", Key: "k", RequestHash: "h2", KeyID: e2.KeyID})
	require.NoError(t, err)
	rec, ok, err := b.store.LookupIdempotency(ctx, "org-a", "k", time.Now().Add(-domain.IdempotencyWindow))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, domain.IdempotencyRecord{OrgID: "org-a", Key: "k", RequestHash: "h2", KeyID: e2.KeyID}, rec)
	require.Equal(t, 2, countEvents(t, b.pool))
}

// tableProjector is a real projector: it records each event it is given,
// with the position the event got, in a table of its own, inside the
// appending transaction.
type tableProjector struct{}

func (tableProjector) Queue(b *pgx.Batch, events []domain.Event) error {
	for _, e := range events {
		b.Queue(`INSERT INTO projected (event_id, position) SELECT id, position FROM events WHERE id = $1
			ON CONFLICT DO NOTHING`, e.ID)
	}
	return nil
}

// TestInlineProjectorsCommitAndRollBackWithTheAppend protects read-your-writes:
// a view updated inline holds exactly the committed events, with their
// positions, and nothing of an append that lost.
func TestInlineProjectorsCommitAndRollBackWithTheAppend(t *testing.T) {
	t.Parallel()
	b := setup(t, tableProjector{})
	ctx := testContext(t)
	_, err := b.pool.Exec(ctx, `CREATE TABLE projected (event_id uuid PRIMARY KEY, position bigint NOT NULL)`)
	require.NoError(t, err)

	first := appendKey(t, b.store, "org-a")
	_, err = b.store.Append(ctx, 0, []domain.Event{generated("org-a", first.KeyID, time.Now())}, nil)
	require.ErrorIs(t, err, domain.ErrConflict)

	rows, err := b.pool.Query(ctx, `SELECT event_id::text, position FROM projected`)
	require.NoError(t, err)
	type row struct {
		id       string
		position int64
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.position)
	})
	require.NoError(t, err)
	require.Equal(t, []row{{first.ID, first.Position}}, got)
}
