package keycache_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/keycache"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/projections"
)

// current is a switchable staleness signal.
type current struct{ on atomic.Bool }

func (c *current) get() bool { return c.on.Load() }

func newCache(t *testing.T, o keycache.Options) (*keycache.Cache, *current) {
	t.Helper()
	cur := &current{}
	cur.on.Store(true)
	c, err := keycache.New(cur.get, o)
	require.NoError(t, err)
	return c, cur
}

var at = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func key(secret string) (*domain.Key, domain.KeyHash) {
	h := domain.HashKey(secret)
	return &domain.Key{ID: domain.NewKeyID(), OrgID: "acme", Name: "k", Hash: h, CreatedAt: at, Version: 1}, h
}

func revoked(k *domain.Key, version int64) domain.Event {
	return domain.Event{ID: domain.NewEventID(), Type: domain.TypeKeyRevoked, OrgID: k.OrgID, KeyID: k.ID,
		StreamVersion: version, OccurredAt: at.Add(time.Minute),
		Data: domain.KeyRevoked{KeyID: k.ID, KeyHash: k.Hash.String(), Reason: "leaked"}}
}

func TestAPositiveIsServedOnlyWhileCurrent(t *testing.T) {
	t.Parallel()
	c, cur := newCache(t, keycache.Options{})
	k, h := key(domain.NewKeySecret("kl"))
	_, ok := c.Get(h)
	require.False(t, ok)
	require.Same(t, k, c.Fill(h, k))
	got, ok := c.Get(h)
	require.True(t, ok)
	require.Same(t, k, got)

	cur.on.Store(false)
	_, ok = c.Get(h)
	require.False(t, ok, "stale: the caller must ask the authority")
	cur.on.Store(true)
	_, ok = c.Get(h)
	require.True(t, ok)
}

func TestATombstoneWinsOverALaterFill(t *testing.T) {
	t.Parallel()
	c, cur := newCache(t, keycache.Options{})
	k, h := key(domain.NewKeySecret("kl"))
	gen := c.Generation()
	// The notice arrives while the lookup that read k as valid is in flight.
	c.Apply(revoked(k, 2))
	got := c.FillAt(gen, h, k)
	require.NotSame(t, k, got)
	require.NotNil(t, got.RevokedAt)
	require.Equal(t, domain.StatusRevoked, got.Status(at))
	require.Equal(t, k.ID, got.ID)
	require.Equal(t, "acme", got.OrgID)
	require.Equal(t, at.Add(time.Minute), *got.RevokedAt)
	require.Equal(t, "leaked", got.RevokeReason)
	require.Same(t, got, c.Fill(h, k), "Fill too")

	// A tombstone is served even when stale.
	cur.on.Store(false)
	g, ok := c.Get(h)
	require.True(t, ok)
	require.Same(t, got, g)
}

func TestARevocationReplacesACachedPositiveAndKeepsWhatItKnew(t *testing.T) {
	t.Parallel()
	c, _ := newCache(t, keycache.Options{})
	k, h := key(domain.NewKeySecret("kl"))
	exp := at.Add(time.Hour)
	k.ExpiresAt = &exp
	c.Fill(h, k)
	c.Apply(revoked(k, 2))
	got, ok := c.Get(h)
	require.True(t, ok)
	require.Equal(t, domain.StatusRevoked, got.Status(at))
	require.Equal(t, "k", got.Name)
	require.Equal(t, &exp, got.ExpiresAt)
	require.Nil(t, k.RevokedAt, "the cached positive itself is never modified")
	positives, tombstones := c.Len()
	require.Equal(t, 0, positives)
	require.Equal(t, 1, tombstones)
}

func TestApplyIsIdempotentByStreamVersion(t *testing.T) {
	t.Parallel()
	c, _ := newCache(t, keycache.Options{})
	k, h := key(domain.NewKeySecret("kl"))
	first := revoked(k, 2)
	c.Apply(first)
	t1, _ := c.Get(h)
	dup := revoked(k, 2) // republished: another message, the same version
	dup.Data = domain.KeyRevoked{KeyID: k.ID, KeyHash: k.Hash.String(), Reason: "other"}
	c.Apply(dup)
	t2, _ := c.Get(h)
	require.Same(t, t1, t2, "a notice not newer than the tombstone changes nothing")
	older := revoked(k, 1)
	c.Apply(older)
	t3, _ := c.Get(h)
	require.Same(t, t1, t3)

	// A tombstone from an authority's answer (version unknown) is upgraded.
	k2, h2 := key(domain.NewKeySecret("kl"))
	now := at
	c.Fill(h2, &domain.Key{OrgID: "acme", Hash: h2, RevokedAt: &now})
	c.Apply(revoked(k2, 2))
	got, _ := c.Get(h2)
	require.Equal(t, k2.ID, got.ID)
	require.EqualValues(t, 2, got.Version)
}

func TestOtherNoticesAddNothing(t *testing.T) {
	t.Parallel()
	c, _ := newCache(t, keycache.Options{})
	k, h := key(domain.NewKeySecret("kl"))
	c.Apply(domain.Event{Type: domain.TypeKeyGenerated, OrgID: "acme", KeyID: k.ID, StreamVersion: 1, OccurredAt: at,
		Data: domain.KeyGenerated{KeyID: k.ID, Name: "k", KeyHash: h.String(), Masked: "...********abcd1234"}})
	c.Apply(domain.Event{Type: "key.renamed", OrgID: "acme", KeyID: k.ID, StreamVersion: 2})
	bad := revoked(k, 3)
	bad.Data = domain.KeyRevoked{KeyID: k.ID, KeyHash: "not hex"}
	c.Apply(bad)
	positives, tombstones := c.Len()
	require.Zero(t, positives+tombstones, "keys are filled on first use, not from key.generated")
}

func TestGapDropsPositivesButKeepsTombstones(t *testing.T) {
	t.Parallel()
	c, _ := newCache(t, keycache.Options{})
	k1, h1 := key(domain.NewKeySecret("kl"))
	k2, h2 := key(domain.NewKeySecret("kl"))
	c.Fill(h1, k1)
	c.Apply(revoked(k2, 2))
	// A lookup that began before the gap must not store its answer.
	k3, h3 := key(domain.NewKeySecret("kl"))
	gen := c.Generation()
	c.Gap()
	_, ok := c.Get(h1)
	require.False(t, ok)
	got, ok := c.Get(h2)
	require.True(t, ok)
	require.NotNil(t, got.RevokedAt)
	require.Same(t, k3, c.FillAt(gen, h3, k3), "the caller still gets the authority's answer")
	_, ok = c.Get(h3)
	require.False(t, ok, "but it is not cached: a revocation may have been lost meanwhile")
	require.Same(t, k3, c.FillAt(c.Generation(), h3, k3))
	_, ok = c.Get(h3)
	require.True(t, ok)
}

func TestPositivesAreBoundedTombstonesAreNot(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c, _ := newCache(t, keycache.Options{MaxEntries: 64, Registerer: reg})
	for range 1000 {
		k, h := key(domain.NewKeySecret("kl"))
		c.Fill(h, k)
	}
	for range 200 {
		k, _ := key(domain.NewKeySecret("kl"))
		c.Apply(revoked(k, 2))
	}
	positives, tombstones := c.Len()
	require.LessOrEqual(t, positives, 64)
	require.Equal(t, 200, tombstones)
	require.EqualValues(t, positives, gauge(t, reg, "keyledger_keycache_entries"))
	require.EqualValues(t, 200, gauge(t, reg, "keyledger_keycache_tombstones"))
	require.EqualValues(t, 1000-positives, gauge(t, reg, "keyledger_keycache_evictions_total"))
}

func TestMetricsCountHitsAndMissesByCause(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	c, cur := newCache(t, keycache.Options{Registerer: reg})
	k, h := key(domain.NewKeySecret("kl"))
	c.Get(h)
	c.Fill(h, k)
	c.Get(h)
	c.Get(h)
	cur.on.Store(false)
	c.Get(h)
	require.EqualValues(t, 2, gauge(t, reg, "keyledger_keycache_hits_total"))
	require.EqualValues(t, 1, gauge(t, reg, "keyledger_keycache_misses_total", "absent"))
	require.EqualValues(t, 1, gauge(t, reg, "keyledger_keycache_misses_total", "stale"))
	_, err := keycache.New(cur.get, keycache.Options{Registerer: reg})
	require.Error(t, err, "a second cache on one registry is refused, not a panic")
}

func TestANilCurrentTrustsNoPositive(t *testing.T) {
	t.Parallel()
	c, err := keycache.New(nil, keycache.Options{})
	require.NoError(t, err)
	k, h := key(domain.NewKeySecret("kl"))
	c.Fill(h, k)
	_, ok := c.Get(h)
	require.False(t, ok)
}

func TestConcurrentFillsAndRevocationsEndRevoked(t *testing.T) {
	t.Parallel()
	c, _ := newCache(t, keycache.Options{MaxEntries: 128})
	keys := make([]*domain.Key, 256)
	for i := range keys {
		keys[i], _ = key(domain.NewKeySecret("kl"))
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(keys); i += 4 {
				for range 3 {
					c.FillAt(c.Generation(), keys[i].Hash, keys[i])
					c.Get(keys[i].Hash)
				}
			}
		})
	}
	wg.Go(func() {
		for _, k := range keys {
			c.Apply(revoked(k, 2))
		}
	})
	wg.Go(func() {
		for range 10 {
			c.Gap()
		}
	})
	wg.Wait()
	for _, k := range keys {
		got, ok := c.Get(k.Hash)
		require.True(t, ok)
		require.NotNil(t, got.RevokedAt)
		require.Same(t, got, c.Fill(k.Hash, k))
	}
}

// countingLookup counts the authority's lookups.
type countingLookup struct {
	domain.KeyLookup
	n atomic.Int64
}

func (c *countingLookup) LookupKey(ctx context.Context, h domain.KeyHash) (*domain.Key, error) {
	c.n.Add(1)
	return c.KeyLookup.LookupKey(ctx, h)
}

// TestLookupServesTheServiceFromTheCacheWithPostgresAsAuthority runs the
// adapter the service's /v1/verify uses, on the real lookup view.
func TestLookupServesTheServiceFromTheCacheWithPostgresAsAuthority(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	views := projections.NewViews(pool)
	ledger := &domain.Ledger{Store: store, KeyPrefix: "kl", Now: time.Now}
	ctx := context.Background()
	g, err := ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: "svc"}, "")
	require.NoError(t, err)

	c, _ := newCache(t, keycache.Options{})
	auth := &countingLookup{KeyLookup: views}
	lookup := keycache.Lookup{Cache: c, Authority: auth}
	for range 3 {
		v, err := domain.Verify(ctx, lookup, "kl", g.Secret, "acme", time.Now())
		require.NoError(t, err)
		require.True(t, v.Valid())
		require.Equal(t, g.Key.ID, v.Key.ID)
	}
	require.EqualValues(t, 1, auth.n.Load(), "asked once, then served from the cache")

	unknown := domain.NewKeySecret("kl")
	for range 2 {
		v, err := domain.Verify(ctx, lookup, "kl", unknown, "acme", time.Now())
		require.NoError(t, err)
		require.Equal(t, domain.ReasonInvalid, v.Reason)
	}
	require.EqualValues(t, 3, auth.n.Load(), "an unknown key is asked each time")

	_, err = ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: "acme", KeyID: g.Key.ID, Reason: "rotated"})
	require.NoError(t, err)
	events, err := store.Load(ctx, "acme", g.Key.ID)
	require.NoError(t, err)
	c.Apply(events[len(events)-1])
	v, err := domain.Verify(ctx, lookup, "kl", g.Secret, "acme", time.Now())
	require.NoError(t, err)
	require.Equal(t, domain.ReasonRevoked, v.Reason)
	require.EqualValues(t, 3, auth.n.Load())
}

func TestLookupHoldsBackPositivesUntilReady(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	views := projections.NewViews(pool)
	ledger := &domain.Ledger{Store: store, KeyPrefix: "kl", Now: time.Now}
	ctx := context.Background()
	g, err := ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: "early"}, "")
	require.NoError(t, err)
	r, err := ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: "revoked"}, "")
	require.NoError(t, err)
	_, err = ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: "acme", KeyID: r.Key.ID})
	require.NoError(t, err)

	c, _ := newCache(t, keycache.Options{})
	ready := make(chan struct{})
	lookup := keycache.Lookup{Cache: c, Authority: views, Ready: ready}
	k, err := lookup.LookupKey(ctx, domain.HashKey(g.Secret))
	require.NoError(t, err)
	require.Equal(t, g.Key.ID, k.ID)
	_, err = lookup.LookupKey(ctx, domain.HashKey(r.Secret))
	require.NoError(t, err)
	positives, tombstones := c.Len()
	require.Zero(t, positives, "not before the follower has subscribed")
	require.Equal(t, 1, tombstones, "a revocation is kept at any time")
	close(ready)
	_, err = lookup.LookupKey(ctx, domain.HashKey(g.Secret))
	require.NoError(t, err)
	positives, _ = c.Len()
	require.Equal(t, 1, positives)
}

func gauge(t *testing.T, reg *prometheus.Registry, name string, cause ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(cause) > 0 && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != cause[0]) {
				continue
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
