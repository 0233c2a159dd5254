package eventstore_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

// TestEventsTableRefusesUpdateDeleteAndTruncate protects DESIGN 6.4: the
// database itself, not only the store's code, refuses every statement that
// would change or remove an event, and the ledger is unchanged afterwards.
func TestEventsTableRefusesUpdateDeleteAndTruncate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	first := appendKey(t, b.store, "org-a")
	_, err := b.store.Append(ctx, 1, []domain.Event{revoked("org-a", first.KeyID, 2, time.Now())}, nil)
	require.NoError(t, err)
	appendKey(t, b.store, "org-b")

	before := readLedger(t, b.pool)
	loadedBefore, err := b.store.Load(ctx, "org-a", first.KeyID)
	require.NoError(t, err)

	for _, stmt := range []string{
		`UPDATE events SET actor = 'mallory'`,
		`UPDATE events SET data = '{}'::jsonb WHERE key_id = '` + first.KeyID + `'`,
		`UPDATE events SET actor = 'mallory' WHERE false`,
		`DELETE FROM events`,
		`DELETE FROM events WHERE position = (SELECT max(position) FROM events)`,
		`TRUNCATE events`,
		`TRUNCATE events RESTART IDENTITY CASCADE`,
		// An upsert that would overwrite an event is an update too.
		`INSERT INTO events (id, org_id, key_id, stream_version, type, actor, occurred_at, data)
			SELECT id, org_id, key_id, stream_version, type, 'mallory', occurred_at, data FROM events
			ON CONFLICT (id) DO UPDATE SET actor = excluded.actor`,
		`MERGE INTO events e USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE`,
	} {
		_, err := b.pool.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, "the database accepted: %s", stmt)
		require.Equal(t, "42501", pgErr.Code, "%s: %v", stmt, err) // insufficient_privilege, from the trigger
		require.Contains(t, pgErr.Message, "append-only")
	}

	// Inside a transaction too: the refusal aborts it.
	tx := begin(t, b.pool)
	_, err = tx.Exec(ctx, `DELETE FROM events WHERE key_id = $1`, first.KeyID)
	require.Error(t, err)
	require.NoError(t, tx.Rollback(ctx))

	require.Equal(t, before, readLedger(t, b.pool), "the ledger changed")
	loadedAfter, err := b.store.Load(ctx, "org-a", first.KeyID)
	require.NoError(t, err)
	require.Len(t, loadedAfter, len(loadedBefore))
	for i := range loadedBefore {
		requireSameEvent(t, loadedBefore[i], loadedAfter[i])
	}

	// Appending still works.
	appendKey(t, b.store, "org-a")
	require.Len(t, readLedger(t, b.pool), len(before)+1)
}
