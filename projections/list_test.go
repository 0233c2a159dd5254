package projections_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/projections"
)

// A search walks the newest keys first, may walk on, and looks its term up
// for the rest (see ListKeys). With walks of a few keys, every page boundary
// falls before, on and after the keys where each step stops, on ties of
// created_at too; each plan must page through exactly the keys a filter over
// the whole list keeps, in list order.
func TestListSearchPagesAlikeWhereverTheWalkStops(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	names := []string{"Production-API", "prod_worker", "staging-1", "100%_off", "100x_off", `back\slash`,
		"deploy-42", "ci-bot", "PRODUCTION", "terraform", "x-42-y", "snake_case", "Ünïcode-Clé"}
	for i := 0; i < 48; i++ {
		for _, org := range []string{"acme", "globex"} { // globex holds the same names: never listed
			cmd := domain.GenerateKey{OrgID: org, Name: names[(i*7)%len(names)], Actor: "tester"}
			switch i % 5 {
			case 1:
				exp := b.now.Add(3 * 24 * time.Hour)
				cmd.ExpiresAt = &exp
			case 2:
				exp := b.now.Add(90 * 24 * time.Hour)
				cmd.ExpiresAt = &exp
			case 3:
				exp := b.now.Add(9 * 24 * time.Hour)
				cmd.ExpiresAt = &exp
			}
			g, err := b.ledger.GenerateKey(ctx, cmd, "")
			require.NoError(t, err)
			if i%4 == 0 {
				_, err := b.ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: org, KeyID: g.Key.ID, Reason: "rotated"})
				require.NoError(t, err)
			}
		}
		if i%3 == 2 { // three keys to a creation time: ties are ordered by key id
			b.now = b.now.Add(time.Second)
		}
	}
	// Five days on, some keys have expired and some expire soon.
	now := b.now.Add(5 * 24 * time.Hour)

	all, err := b.views.ListKeys(ctx, domain.KeyQuery{OrgID: "acme", Limit: domain.MaxPageSize, Now: now})
	require.NoError(t, err)
	require.Len(t, all.Keys, 48)
	require.Empty(t, all.NextCursor)

	type plan struct{ sample, dense, most int } // the default if zero
	plans := []plan{
		{1, 1, 1}, {1, 1, 3}, {2, 1, 2}, {2, 2, 5}, {5, 1, 4}, {5, 2, 16}, {5, 3, 100},
		{16, 1, 1}, {16, 4, 8}, {16, 100, 1}, // walk, then look up
		{1, 100, 1}, {100, 1, 100}, // look up after the first key; walk for all
		{},
	}
	for _, pl := range plans {
		views := projections.NewViews(b.pool)
		if pl != (plan{}) {
			projections.SetSearchPlan(views, pl.sample, pl.dense, pl.most)
		}
		for _, search := range []string{"prod", "PRODUCTION", "_", "%", `\`, "-42", "o", "terraform", "no-such-name"} {
			for _, status := range append([]domain.Status{""}, domain.Statuses...) {
				var want []*domain.Key
				for _, k := range all.Keys {
					if strings.Contains(strings.ToLower(k.Name), strings.ToLower(search)) && (status == "" || k.Status(now) == status) {
						want = append(want, k)
					}
				}
				for _, limit := range []int{2, 3, 50} {
					what := fmt.Sprintf("plan %v, q=%q, status=%q, limit %d", pl, search, status, limit)
					var got []*domain.Key
					q := domain.KeyQuery{OrgID: "acme", Search: search, Status: status, Limit: limit, Now: now}
					for pages := 0; ; pages++ {
						require.Less(t, pages, 50, what)
						page, err := views.ListKeys(ctx, q)
						require.NoError(t, err, what)
						require.LessOrEqual(t, len(page.Keys), limit, what)
						got = append(got, page.Keys...)
						if page.NextCursor == "" {
							break
						}
						require.Len(t, page.Keys, limit, what)
						q.Cursor = page.NextCursor
					}
					require.Equal(t, want, got, what)
				}
			}
		}
	}

	// Beyond ASCII, the walk (generic plan, the pattern lowered once) and
	// the lookup (planned for the pattern, which key_list_org_lname may
	// serve) agree: compared with each other, not with Go's case folding,
	// which need not be the database's.
	pages := func(lookup bool, search string) []*domain.Key {
		views := projections.NewViews(b.pool)
		if lookup { // after the first key
			projections.SetSearchPlan(views, 1, 100, 1)
		}
		var got []*domain.Key
		q := domain.KeyQuery{OrgID: "acme", Search: search, Limit: 3, Now: now}
		for {
			page, err := views.ListKeys(ctx, q)
			require.NoError(t, err)
			got = append(got, page.Keys...)
			if page.NextCursor == "" {
				return got
			}
			q.Cursor = page.NextCursor
		}
	}
	for _, search := range []string{"ÜNÏ", "clé", "É", "Ünïcode-Clé", "code-cl"} {
		walked := pages(false, search)
		require.Equal(t, pages(true, search), walked, "q=%q", search)
		t.Logf("q=%q: %d keys", search, len(walked))
	}
	require.NotEmpty(t, pages(false, "code-cl"))
	var lowersBeyondASCII bool
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT lower('Ü') = 'ü'`).Scan(&lowersBeyondASCII))
	if lowersBeyondASCII { // a database whose locale lowers Ü (C.UTF-8 does; C does not)
		require.NotEmpty(t, pages(false, "ÜNÏ"), "the walk did not fold the case of Ü and Ï")
	}
}

// A search's walk runs with its generic plan, not planned again at each
// call (see ListKeys), and leaves the connection's plan_cache_mode as it
// was.
func TestListSearchWalksWithItsGenericPlan(t *testing.T) {
	t.Parallel()
	pool := pgtest.PoolFor(t, pgtest.NewDatabase(t), 1) // one connection: its statements are the search's
	b := setupOn(t, pool)
	now := b.now
	ctx := context.Background()
	for i := range 6 {
		_, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: fmt.Sprintf("deploy-%d", i), Actor: "tester"}, "")
		require.NoError(t, err)
	}
	var before string
	require.NoError(t, pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&before))
	views := b.views
	for range 7 { // past the five runs after which Postgres may settle on a plan
		page, err := views.ListKeys(ctx, domain.KeyQuery{OrgID: "acme", Search: "PLOY-", Status: domain.StatusActive, Limit: 4, Now: now})
		require.NoError(t, err)
		require.Len(t, page.Keys, 4)
		require.NotEmpty(t, page.NextCursor)
	}
	var generic, custom int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)
		FROM pg_prepared_statements WHERE statement LIKE '%walked%' AND statement NOT LIKE '%pg_prepared_statements%'`).Scan(&generic, &custom))
	require.Equal(t, int64(7), generic)
	require.Zero(t, custom)
	var after string
	require.NoError(t, pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&after))
	require.Equal(t, before, after)
}
