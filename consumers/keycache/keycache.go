package keycache

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/domain"
)

// DefaultMaxEntries bounds the positives of a cache built without
// Options.MaxEntries.
const DefaultMaxEntries = 1_000_000

// shardCount spreads the entries over independently locked maps, so that
// concurrent verifications rarely meet on one lock. Digests are uniform, so
// their first byte picks the shard.
const shardCount = 64

// Options are a Cache's optional settings.
type Options struct {
	// MaxEntries bounds the positives (default DefaultMaxEntries).
	// Tombstones are not counted and never evicted.
	MaxEntries int
	// Registerer, if set, receives the cache's metrics.
	Registerer prometheus.Registerer
}

// Cache holds keys by digest: positives while they are trusted, tombstones
// for good. It implements notices.Sink. The zero value is not usable: build
// one with New.
type Cache struct {
	current  func() bool
	perShard int
	gen      atomic.Uint64
	shards   [shardCount]shard
}

type shard struct {
	mu         sync.RWMutex
	positives  map[domain.KeyHash]*domain.Key
	tombstones map[domain.KeyHash]*domain.Key

	hits, missAbsent, missStale, evictions atomic.Uint64
	_                                      [64]byte // keeps neighbouring shards' counters off one cache line
}

// New returns an empty cache. current reports whether the notices that feed
// the cache are current, that is whether a positive may still be trusted;
// for a gateway it is the follower's CurrentWithin(bound). A nil current
// trusts no positive: only tombstones are served.
func New(current func() bool, o Options) (*Cache, error) {
	if current == nil {
		current = func() bool { return false }
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	c := &Cache{current: current, perShard: max(1, (o.MaxEntries+shardCount-1)/shardCount)}
	for i := range c.shards {
		c.shards[i].positives = make(map[domain.KeyHash]*domain.Key)
		c.shards[i].tombstones = make(map[domain.KeyHash]*domain.Key)
	}
	if o.Registerer != nil {
		if err := c.register(o.Registerer); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cache) shard(h domain.KeyHash) *shard { return &c.shards[h[0]%shardCount] }

// Get returns the entry for a digest: a tombstone always, a positive only
// while the notices are current. A miss (false) means: ask the authority,
// then Fill.
func (c *Cache) Get(h domain.KeyHash) (*domain.Key, bool) {
	s := c.shard(h)
	s.mu.RLock()
	if k, ok := s.tombstones[h]; ok {
		s.mu.RUnlock()
		s.hits.Add(1)
		return k, true
	}
	k, ok := s.positives[h]
	s.mu.RUnlock()
	switch {
	case !ok:
		s.missAbsent.Add(1)
		return nil, false
	case !c.current():
		s.missStale.Add(1)
		return nil, false
	}
	s.hits.Add(1)
	return k, true
}

// Generation changes each time the cache learns that notices were lost
// (Gap). Read it before asking the authority and pass it to FillAt.
func (c *Cache) Generation() uint64 { return c.gen.Load() }

// Fill stores what an authority answered for a digest and returns the entry
// the caller must use: the tombstone if one is held (a revocation notice won
// the race with the lookup), else k. A revoked k is stored as a tombstone; a
// nil k (unknown key) stores nothing. Prefer FillAt, which also guards
// against a gap in the notices during the lookup.
func (c *Cache) Fill(h domain.KeyHash, k *domain.Key) *domain.Key {
	return c.fill(h, k, 0, false)
}

// FillAt is Fill for a lookup that began at generation gen: if notices were
// lost since (Gap), a positive is returned to the caller but not stored,
// since a revocation may have been missed after the authority read it.
func (c *Cache) FillAt(gen uint64, h domain.KeyHash, k *domain.Key) *domain.Key {
	return c.fill(h, k, gen, true)
}

func (c *Cache) fill(h domain.KeyHash, k *domain.Key, gen uint64, checkGen bool) *domain.Key {
	if k == nil {
		return nil
	}
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tombstones[h]; ok {
		return t
	}
	if k.RevokedAt != nil {
		s.tombstones[h] = k
		delete(s.positives, h)
		return k
	}
	// Gap bumps the generation before it clears the shards, each under its
	// lock, so a positive stored here under an old generation is cleared.
	if checkGen && c.gen.Load() != gen {
		return k
	}
	if old, ok := s.positives[h]; ok {
		if old.Version > k.Version {
			return old
		}
	} else if len(s.positives) >= c.perShard {
		for victim := range s.positives { // map order: an arbitrary entry
			delete(s.positives, victim)
			s.evictions.Add(1)
			break
		}
	}
	s.positives[h] = k
	return k
}

// Wants implements notices.Selective: the cache reads revocations only.
func (c *Cache) Wants(eventType string) bool { return eventType == domain.TypeKeyRevoked }

// Apply implements notices.Sink. A key.revoked notice becomes a tombstone,
// whether or not the key is cached; key.generated adds nothing (keys are
// filled on first use); other types are ignored.
func (c *Cache) Apply(e domain.Event) {
	d, ok := e.Data.(domain.KeyRevoked)
	if !ok {
		return
	}
	h, err := domain.ParseKeyHash(d.KeyHash)
	if err != nil {
		return
	}
	s := c.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	var t domain.Key
	if old, ok := s.tombstones[h]; ok {
		if old.Version >= e.StreamVersion {
			return // already applied, or a newer fact is held
		}
		t = *old
	} else if p, ok := s.positives[h]; ok {
		t = *p // keeps the name and expiry the positive knew
	}
	at := e.OccurredAt
	t.ID, t.OrgID, t.Hash = d.KeyID, e.OrgID, h
	t.RevokedAt, t.RevokeReason, t.Version = &at, d.Reason, e.StreamVersion
	s.tombstones[h] = &t
	delete(s.positives, h)
}

// Gap implements notices.Sink: notices were lost, so every positive may hide
// a missed revocation and is dropped. Tombstones stay.
func (c *Cache) Gap() {
	c.gen.Add(1)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.positives)
		s.mu.Unlock()
	}
}

// Len returns how many positives and tombstones the cache holds.
func (c *Cache) Len() (positives, tombstones int) {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		positives += len(s.positives)
		tombstones += len(s.tombstones)
		s.mu.RUnlock()
	}
	return positives, tombstones
}

// Lookup is a domain.KeyLookup that answers from the cache and asks the
// authority on a miss, filling the cache with its answer. It is what the
// service's /v1/verify uses, with the Postgres lookup view as the authority.
type Lookup struct {
	Cache     *Cache
	Authority domain.KeyLookup
	// Ready, if set, holds back positives until it is closed: pass the
	// follower's Started(). A key read before the follower subscribed
	// could have been revoked by a notice the follower will never see.
	// Tombstones are stored at any time.
	Ready <-chan struct{}
}

// LookupKey implements domain.KeyLookup.
func (l Lookup) LookupKey(ctx context.Context, h domain.KeyHash) (*domain.Key, error) {
	if k, ok := l.Cache.Get(h); ok {
		return k, nil
	}
	gen := l.Cache.Generation()
	ready := l.ready()
	k, err := l.Authority.LookupKey(ctx, h)
	if err != nil || k == nil {
		return k, err
	}
	if !ready && k.RevokedAt == nil {
		return k, nil
	}
	return l.Cache.FillAt(gen, h, k), nil
}

func (l Lookup) ready() bool {
	if l.Ready == nil {
		return true
	}
	select {
	case <-l.Ready:
		return true
	default:
		return false
	}
}

func (c *Cache) sum(f func(s *shard) uint64) float64 {
	var n uint64
	for i := range c.shards {
		n += f(&c.shards[i])
	}
	return float64(n)
}

func (c *Cache) register(r prometheus.Registerer) error {
	const ns, sub = "keyledger", "keycache"
	miss := func(cause string, f func(s *shard) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "misses_total",
			Help:        "Lookups the cache could not answer, by cause: absent (not cached), stale (cached but the notices are not current).",
			ConstLabels: prometheus.Labels{"cause": cause}}, func() float64 { return c.sum(f) })
	}
	for _, col := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "hits_total",
			Help: "Lookups answered from the cache (positives and tombstones)."},
			func() float64 { return c.sum(func(s *shard) uint64 { return s.hits.Load() }) }),
		miss("absent", func(s *shard) uint64 { return s.missAbsent.Load() }),
		miss("stale", func(s *shard) uint64 { return s.missStale.Load() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "evictions_total",
			Help: "Positives evicted because the cache was full."},
			func() float64 { return c.sum(func(s *shard) uint64 { return s.evictions.Load() }) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "entries",
			Help: "Positives held (keys known valid as of a lookup)."},
			func() float64 { p, _ := c.Len(); return float64(p) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tombstones",
			Help: "Tombstones held (keys known revoked); never evicted."},
			func() float64 { _, t := c.Len(); return float64(t) }),
	} {
		if err := r.Register(col); err != nil {
			return err
		}
	}
	return nil
}
