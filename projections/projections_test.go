package projections_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/projections"
)

type bundle struct {
	pool   *pgxpool.Pool
	store  *eventstore.Store
	views  *projections.Views
	ledger *domain.Ledger
	now    time.Time
}

func setup(t *testing.T) *bundle {
	t.Helper()
	return setupOn(t, pgtest.NewPool(t))
}

// setupOn is setup on a pool of the caller's.
func setupOn(t *testing.T, pool *pgxpool.Pool) *bundle {
	t.Helper()
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	b := &bundle{pool: pool, store: store, views: projections.NewViews(pool), now: time.Date(2026, 3, 3, 9, 0, 0, 0, time.UTC)}
	b.ledger = &domain.Ledger{Store: store, KeyPrefix: "kl", Now: func() time.Time { return b.now }}
	return b
}

// populate issues keys in two organizations with every status, and revokes
// some, through the command path.
func (b *bundle) populate(t *testing.T, n int) map[string]string {
	t.Helper()
	ctx := context.Background()
	secrets := map[string]string{}
	for i := 0; i < n; i++ {
		org := []string{"acme", "globex"}[i%2]
		cmd := domain.GenerateKey{OrgID: org, Name: fmt.Sprintf("key-%03d", i), Actor: "tester"}
		switch i % 4 {
		case 1:
			exp := b.now.Add(3 * 24 * time.Hour)
			cmd.ExpiresAt = &exp
		case 2:
			exp := b.now.Add(90 * 24 * time.Hour)
			cmd.ExpiresAt = &exp
		}
		g, err := b.ledger.GenerateKey(ctx, cmd, "")
		require.NoError(t, err)
		secrets[g.Key.ID] = g.Secret
		if i%3 == 0 {
			_, err := b.ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: org, KeyID: g.Key.ID, Reason: "rotated"})
			require.NoError(t, err)
		}
		b.now = b.now.Add(time.Second)
	}
	return secrets
}

// dump reads both views whole, in a stable order, as text.
func dump(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	var rows []string
	for _, q := range []string{
		`SELECT t::text FROM key_list t ORDER BY org_id, key_id`,
		`SELECT t::text FROM key_lookup t ORDER BY key_hash`,
	} {
		r, err := pool.Query(context.Background(), q)
		require.NoError(t, err)
		for r.Next() {
			var s string
			require.NoError(t, r.Scan(&s))
			rows = append(rows, s)
		}
		require.NoError(t, r.Err())
	}
	return rows
}

func TestRebuildFromTheLogReproducesBothViewsRowForRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 60)
	before := dump(t, b.pool)
	require.Len(t, before, 120)

	_, err := b.pool.Exec(context.Background(), `TRUNCATE key_list, key_lookup`)
	require.NoError(t, err)
	require.Empty(t, dump(t, b.pool))

	var progress []int
	require.NoError(t, projections.Rebuild(context.Background(), b.pool, func(n int) { progress = append(progress, n) }))
	require.Equal(t, before, dump(t, b.pool))
	require.NotEmpty(t, progress)
	require.Equal(t, 60+20, progress[len(progress)-1], "every event replayed: 60 generated, 20 revoked")
}

func TestRebuildOverLiveViewsChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 20)
	before := dump(t, b.pool)
	require.NoError(t, projections.Rebuild(context.Background(), b.pool, nil))
	require.Equal(t, before, dump(t, b.pool))
}

func TestApplyingAnEventTwiceLeavesTheViewsAsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 12)
	before := dump(t, b.pool)
	events, err := eventstore.ReadAll(context.Background(), b.pool, 0, 1000)
	require.NoError(t, err)
	tx, err := b.pool.Begin(context.Background())
	require.NoError(t, err)
	batch := &pgx.Batch{}
	for _, p := range []eventstore.Projector{projections.KeyList{Replay: true}, projections.KeyLookup{Replay: true}} {
		require.NoError(t, p.Queue(batch, events))
	}
	require.NoError(t, tx.SendBatch(context.Background(), batch).Close())
	require.NoError(t, tx.Commit(context.Background()))
	require.Equal(t, before, dump(t, b.pool))
}

// The command path's projectors insert a new key's rows without looking for
// them first (no ON CONFLICT): an append of a new key whose digest is already
// another's (the lookup view's key; a new key id cannot reach the views
// twice, the events table refuses its second version 1 first) fails, and
// commits neither its event nor any view's row, where it committed the event
// without its lookup row.
func TestAnAppendReusingAKeyDigestCommitsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 4)
	ctx := context.Background()
	before := dump(t, b.pool)
	events, err := eventstore.ReadAll(ctx, b.pool, 0, 1)
	require.NoError(t, err)
	taken := events[0].Data.(domain.KeyGenerated)
	dup := domain.Event{ID: domain.NewEventID(), Type: domain.TypeKeyGenerated, OrgID: events[0].OrgID, KeyID: "key_reuses_a_digest",
		StreamVersion: 1, OccurredAt: b.now, Actor: "tester",
		Data: domain.KeyGenerated{KeyID: "key_reuses_a_digest", Name: "dup", KeyHash: taken.KeyHash, Masked: taken.Masked}}

	_, err = b.store.Append(ctx, 0, []domain.Event{dup}, nil)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "key_lookup_pkey", pgErr.ConstraintName)

	var n int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE key_id = $1`, dup.KeyID).Scan(&n))
	require.Zero(t, n, "the event is not committed")
	require.Equal(t, before, dump(t, b.pool), "neither view changed")
}

func TestViewsAgreeWithTheAggregateFoldedFromTheLog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	secrets := b.populate(t, 16)
	ctx := context.Background()
	for id, secret := range secrets {
		var org string
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT org_id FROM events WHERE key_id = $1 LIMIT 1`, id).Scan(&org))
		events, err := b.store.Load(ctx, org, id)
		require.NoError(t, err)
		want := domain.KeyFromEvents(events)

		got, err := b.views.GetKey(ctx, org, id)
		require.NoError(t, err)
		require.Equal(t, want.Status(b.now), got.Status(b.now))
		require.Equal(t, want.Name, got.Name)
		require.Equal(t, want.Masked, got.Masked)
		require.True(t, want.CreatedAt.Equal(got.CreatedAt))

		looked, err := b.views.LookupKey(ctx, domain.HashKey(secret))
		require.NoError(t, err)
		require.NotNil(t, looked)
		require.Equal(t, id, looked.ID)
		require.Equal(t, org, looked.OrgID)
		require.Equal(t, want.Status(b.now), looked.Status(b.now))
	}
	missing, err := b.views.LookupKey(ctx, domain.HashKey(domain.NewKeySecret("kl")))
	require.NoError(t, err)
	require.Nil(t, missing)
}

func TestListFiltersByStatusAtTheGivenTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 24)
	ctx := context.Background()
	all, err := b.views.ListKeys(ctx, domain.KeyQuery{OrgID: "acme", Limit: domain.MaxPageSize, Now: b.now})
	require.NoError(t, err)
	counts := map[domain.Status]int{}
	for _, k := range all.Keys {
		counts[k.Status(b.now)]++
	}
	for _, st := range domain.Statuses {
		page, err := b.views.ListKeys(ctx, domain.KeyQuery{OrgID: "acme", Status: st, Limit: domain.MaxPageSize, Now: b.now})
		require.NoError(t, err)
		require.Len(t, page.Keys, counts[st], "status %s", st)
		for _, k := range page.Keys {
			require.Equal(t, st, k.Status(b.now))
		}
	}
	// Ten days on, keys that expired soon are expired.
	later := b.now.Add(10 * 24 * time.Hour)
	page, err := b.views.ListKeys(ctx, domain.KeyQuery{OrgID: "acme", Status: domain.StatusExpired, Limit: domain.MaxPageSize, Now: later})
	require.NoError(t, err)
	require.Len(t, page.Keys, counts[domain.StatusExpired]+counts[domain.StatusExpiresSoon])
}

func TestConcurrentLookupsEachGetTheirOwnKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	secrets := b.populate(t, 40)
	ctx := context.Background()
	type probe struct {
		id     string
		secret string
	}
	var probes []probe
	for id, secret := range secrets {
		probes = append(probes, probe{id, secret}, probe{id, secret}) // the same key twice in flight
		probes = append(probes, probe{"", domain.NewKeySecret("kl")}) // and unknown keys
	}
	errs := make(chan error, len(probes))
	for _, p := range probes {
		go func() {
			k, err := b.views.LookupKey(ctx, domain.HashKey(p.secret))
			switch {
			case err != nil:
				errs <- err
			case p.id == "" && k != nil:
				errs <- fmt.Errorf("an unknown key found %s", k.ID)
			case p.id != "" && (k == nil || k.ID != p.id || !k.Hash.Equal(domain.HashKey(p.secret))):
				errs <- fmt.Errorf("key %s: got %+v", p.id, k)
			default:
				errs <- nil
			}
		}()
	}
	for range probes {
		require.NoError(t, <-errs)
	}
}
