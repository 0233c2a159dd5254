package projections_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections"
)

func indexNames(t *testing.T, b *bundle) []string {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT tablename || '.' || indexname FROM pg_indexes
		WHERE schemaname = current_schema() AND tablename IN ('key_list', 'key_lookup') ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// TestRebuildAsideKeepsReadersAndWritersGoingAndMissesNothing protects
// DESIGN 6.6 for the online rebuild: while the new views are built, readers
// read the old ones and commands keep appending; after the swap the views
// are exactly those a replay of the whole log makes, commits made during the
// build included, under the same table and index names.
func TestRebuildAsideKeepsReadersAndWritersGoingAndMissesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.populate(t, 60)
	indexesBefore := indexNames(t, b)
	var before []*domain.Key
	page, err := b.views.ListKeys(ctx, domain.KeyQuery{OrgID: "acme", Limit: 200, Now: b.now})
	require.NoError(t, err)
	before = page.Keys

	var during []string
	var progress []int
	err = projections.RebuildAside(ctx, b.pool, func(n int) {
		progress = append(progress, n)
		if len(during) > 0 {
			return
		}
		// Readers read the old views, unblocked, while the new ones fill.
		readCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		page, err := b.views.ListKeys(readCtx, domain.KeyQuery{OrgID: "acme", Limit: 200, Now: b.now})
		require.NoError(t, err)
		require.Len(t, page.Keys, len(before))
		// Commands keep going, and commit after the rebuild's snapshot.
		g, err := b.ledger.GenerateKey(readCtx, domain.GenerateKey{OrgID: "acme", Name: "made-during-rebuild"}, "")
		require.NoError(t, err)
		during = append(during, g.Key.ID)
		_, err = b.ledger.RevokeKey(readCtx, domain.RevokeKey{OrgID: "acme", KeyID: before[0].ID, Reason: "during"})
		require.NoError(t, err)
	})
	require.NoError(t, err)
	require.NotEmpty(t, during)
	require.Equal(t, 60+20+2, progress[len(progress)-1], "every event applied: the log, then what committed during the build")

	after := dump(t, b.pool)
	k, err := b.views.GetKey(ctx, "acme", during[0])
	require.NoError(t, err, "the key generated during the rebuild is in the new views")
	require.Equal(t, "made-during-rebuild", k.Name)
	revoked, err := b.views.GetKey(ctx, "acme", before[0].ID)
	require.NoError(t, err)
	require.NotNil(t, revoked.RevokedAt, "the revocation made during the rebuild is in the new views")

	require.NoError(t, projections.Rebuild(ctx, b.pool, nil))
	require.Equal(t, dump(t, b.pool), after, "the swapped-in views are those a full replay makes")
	require.Equal(t, indexesBefore, indexNames(t, b), "same indexes, same names")

	// The command path writes to the new views.
	g, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "globex", Name: "after-swap"}, "")
	require.NoError(t, err)
	found, err := b.views.LookupKey(ctx, domain.HashKey(g.Secret))
	require.NoError(t, err)
	require.Equal(t, g.Key.ID, found.ID)

	var schemas int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'keyledger_%'`).Scan(&schemas))
	require.Zero(t, schemas, "no work schema is left behind")

	// A second rebuild over the swapped views changes nothing.
	again := dump(t, b.pool)
	require.NoError(t, projections.RebuildAside(ctx, b.pool, nil))
	require.Equal(t, again, dump(t, b.pool))
}
