package eventstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// TestStoreAnswersUnavailableWhenPostgresCannotBeReached: every store call
// against a server that refuses connections fails with code "unavailable"
// (a 503, retry later), not "internal".
func TestStoreAnswersUnavailableWhenPostgresCannotBeReached(t *testing.T) {
	t.Parallel()
	// Port 1 on the loopback: nothing listens there, so connecting is refused.
	pool := pgtest.PoolFor(t, "postgres://postgres@127.0.0.1:1/keyledger?sslmode=disable&connect_timeout=2", 2)
	store := eventstore.New(pool)
	ctx := testContext(t)
	e := generated("org-a", domain.NewKeyID(), time.Now())

	calls := map[string]func() error{
		"Load": func() error {
			_, err := store.Load(ctx, "org-a", e.KeyID)
			return err
		},
		"Append": func() error {
			_, err := store.Append(ctx, 0, []domain.Event{e}, nil)
			return err
		},
		"AppendWithIdempotency": func() error {
			_, err := store.Append(ctx, 0, []domain.Event{e}, &domain.IdempotencyRecord{OrgID: "org-a", Key: "k", RequestHash: "h", KeyID: e.KeyID})
			return err
		},
		"LookupIdempotency": func() error {
			_, _, err := store.LookupIdempotency(ctx, "org-a", "k", time.Now().Add(-time.Hour))
			return err
		},
		"Tail": func() error {
			_, _, err := store.Tail(ctx, eventstore.Cursor{}, 10)
			return err
		},
		"OrgEvents": func() error {
			_, _, err := store.OrgEvents(ctx, "org-a", eventstore.Cursor{}, 10)
			return err
		},
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		require.Error(t, err, name)
		require.Equal(t, domain.EUnavailable, domain.ErrorCode(err), "%s: %v", name, err)
		require.False(t, errors.Is(err, domain.ErrConflict), name)
		require.NotContains(t, domain.ErrorMessage(err), "127.0.0.1", "%s: the client-safe message names the server", name)
		require.Less(t, time.Since(start), 10*time.Second, "%s took too long to fail", name)
	}
}

// sleepingProjector queues a long sleep after the inserts of an append, so
// that a test can cancel the append while its transaction is open and its
// rows are written but not committed.
type sleepingProjector struct{}

func (sleepingProjector) Queue(b *pgx.Batch, _ []domain.Event) error {
	b.Queue(`SELECT pg_sleep(30)`)
	return nil
}

// TestAppendCancelledMidwayWritesNothing: an append whose context is
// cancelled while its transaction is open (after its inserts, or while its
// insert waits on a lock) returns promptly with an error, after Postgres has
// cancelled its transaction, and leaves no event, no idempotency record and
// no lock behind, even once the lock it waited on is released.
func TestAppendCancelledMidwayWritesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// stall makes the append stop midway, and returns a function that
		// lets go of whatever it holds.
		stall func(t *testing.T, b bundle, keyID string) (appendStore *eventstore.Store, release func())
	}{
		{
			name: "AfterItsInserts",
			stall: func(t *testing.T, b bundle, _ string) (*eventstore.Store, func()) {
				return eventstore.New(b.pool, sleepingProjector{}), func() {}
			},
		},
		{
			name: "WhileItsInsertWaitsOnALock",
			stall: func(t *testing.T, b bundle, keyID string) (*eventstore.Store, func()) {
				tx := begin(t, b.pool)
				rawInsert(t, context.Background(), tx, "org-a", keyID, 1)
				return b.store, func() { require.NoError(t, tx.Rollback(context.Background())) }
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			keyID := domain.NewKeyID()
			appendStore, release := tc.stall(t, b, keyID)

			ctx, cancel := context.WithCancel(testContext(t))
			defer cancel()
			done := make(chan error, 1)
			now := time.Now()
			go func() {
				_, err := appendStore.Append(ctx, 0, []domain.Event{generated("org-a", keyID, now), revoked("org-a", keyID, 2, now)},
					&domain.IdempotencyRecord{OrgID: "org-a", Key: "cancelled", RequestHash: "h", KeyID: keyID})
				done <- err
			}()

			// Wait until the append is stuck midway, in its sleep or its
			// lock wait, with its transaction open.
			stalled := func() int {
				var n int
				require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
					AND (query LIKE '%pg_sleep%' OR wait_event_type = 'Lock')`).Scan(&n))
				return n
			}
			waitFor(t, "the append to stall midway", func() bool { return stalled() > 0 })
			cancel()
			select {
			case err := <-done:
				require.Error(t, err)
				t.Logf("cancelled append: %v", err)
				require.NotEqual(t, domain.EConflict, domain.ErrorCode(err), "a cancelled append is not a conflict: %v", err)
			case <-time.After(15 * time.Second):
				t.Fatal("a cancelled append did not return")
			}
			// Postgres was asked to cancel it, and the append returned
			// once its transaction had ended: nothing of it still runs,
			// though the lock it waited on is still held.
			require.Zero(t, stalled(), "the cancelled append still runs in Postgres after it returned")
			// Let go of the lock (if any), and wait until the cancelled
			// append's session has finished whatever it still had queued:
			// an append that reported failure must not commit afterwards.
			release()
			waitFor(t, "the cancelled append's session to finish", func() bool {
				var n int
				require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'`).Scan(&n))
				return n == 0
			})
			require.Zero(t, countEvents(t, b.pool), "an append that returned an error committed its events")
			require.Zero(t, countIdempotencyKeys(t, b.pool), "an append that returned an error committed its idempotency record")

			// Nothing holds the stream or the idempotency key: the same
			// append goes through now.
			retryCtx, retryCancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer retryCancel()
			out, err := b.store.Append(retryCtx, 0, []domain.Event{generated("org-a", keyID, now), revoked("org-a", keyID, 2, now)},
				&domain.IdempotencyRecord{OrgID: "org-a", Key: "cancelled", RequestHash: "h", KeyID: keyID})
			require.NoError(t, err)
			require.Len(t, out, 2)
			require.Equal(t, 2, countEvents(t, b.pool))
		})
	}
}

// TestUnavailableLeavesOtherErrorsAlone checks the translation table itself:
// only errors that mean "cannot reach Postgres" become unavailable.
func TestUnavailableLeavesOtherErrorsAlone(t *testing.T) {
	t.Parallel()
	require.NoError(t, eventstore.Unavailable(nil))
	plain := errors.New("boom")
	require.Equal(t, plain, eventstore.Unavailable(plain))
	require.Equal(t, domain.EUnavailable, domain.ErrorCode(eventstore.Unavailable(context.DeadlineExceeded)))
	// So is a command whose callers have all gone: nobody hears its answer,
	// but the logs and the metrics count it as an outage, not a bug.
	require.Equal(t, domain.EUnavailable, domain.ErrorCode(eventstore.Unavailable(fmt.Errorf("append: %w", context.Canceled))))

	// A real SQL error is not an outage.
	pool := pgtest.NewPool(t)
	_, err := pool.Exec(context.Background(), `SELECT * FROM no_such_table`)
	require.Error(t, err)
	require.Equal(t, domain.EInternal, domain.ErrorCode(eventstore.Unavailable(err)))
	require.False(t, strings.Contains(domain.ErrorMessage(eventstore.Unavailable(err)), "no_such_table"))

	// A server that ends the session (FATAL), or refuses to open one (a
	// missing database: a connect error carrying the server's error), is
	// out of reach, whatever its error code.
	fatal := &pgconn.PgError{Severity: "FATAL", Code: "25P03", Message: "terminating connection due to idle-in-transaction timeout"}
	require.Equal(t, domain.EUnavailable, domain.ErrorCode(eventstore.Unavailable(fatal)))
	u, err := url.Parse(pgtest.NewDatabase(t))
	require.NoError(t, err)
	id := domain.NewKeyID() // its last characters are random
	u.Path = "/no_such_database_" + strings.ToLower(id[len(id)-8:])
	_, err = pgx.Connect(context.Background(), u.String())
	require.Error(t, err)
	require.Equal(t, domain.EUnavailable, domain.ErrorCode(eventstore.Unavailable(err)), "%v", err)
}
