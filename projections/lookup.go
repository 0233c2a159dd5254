package projections

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// LookupKey returns the key whose digest is hash, or nil.
//
// Verification is the hot path of a gateway fleet, so concurrent lookups are
// coalesced: a few workers each take every lookup waiting when they become
// free and answer them with one query (key_hash = ANY($1)). Alone, a lookup
// is one query as before; under load, one round trip and one index scan
// serve many, which is what keeps the tail latency down on a small machine.
func (v *Views) LookupKey(ctx context.Context, hash domain.KeyHash) (*domain.Key, error) {
	return v.lookups.lookup(ctx, hash)
}

const (
	// maxLookupBatch bounds the keys of one query.
	maxLookupBatch = 64
	// lookupTimeout bounds one query: it serves several callers, so no one
	// caller's context governs it.
	lookupTimeout = 5 * time.Second
)

type lookupRequest struct {
	hash  domain.KeyHash
	reply chan lookupResult
}

type lookupResult struct {
	key *domain.Key
	err error
}

// lookupBatcher runs the coalesced lookups of LookupKey.
type lookupBatcher struct {
	pool     *pgxpool.Pool
	requests chan lookupRequest
	done     chan struct{}
	stop     sync.Once
	replies  sync.Pool
}

// newLookupBatcher starts half the pool's connections' worth of workers (at
// least one), so that lookups never starve the command path of connections.
func newLookupBatcher(pool *pgxpool.Pool) *lookupBatcher {
	b := &lookupBatcher{
		pool:     pool,
		requests: make(chan lookupRequest),
		done:     make(chan struct{}),
	}
	b.replies.New = func() any { return make(chan lookupResult, 1) }
	workers := max(1, int(pool.Config().MaxConns)/2)
	for range workers {
		go b.work()
	}
	return b
}

func (b *lookupBatcher) close() { b.stop.Do(func() { close(b.done) }) }

func (b *lookupBatcher) lookup(ctx context.Context, hash domain.KeyHash) (*domain.Key, error) {
	reply := b.replies.Get().(chan lookupResult)
	select {
	case b.requests <- lookupRequest{hash: hash, reply: reply}:
	case <-ctx.Done():
		b.replies.Put(reply)
		return nil, fmt.Errorf("lookup key: %w", eventstore.Unavailable(ctx.Err()))
	case <-b.done:
		b.replies.Put(reply)
		return nil, domain.Errorf(domain.EUnavailable, "the service is shutting down")
	}
	select {
	case r := <-reply:
		b.replies.Put(reply)
		return r.key, r.err
	case <-ctx.Done():
		// The worker still answers into the buffered reply, which is then
		// dropped rather than reused.
		return nil, fmt.Errorf("lookup key: %w", eventstore.Unavailable(ctx.Err()))
	}
}

// work answers batches of lookups until the batcher is closed.
func (b *lookupBatcher) work() {
	batch := make([]lookupRequest, 0, maxLookupBatch)
	hashes := make([][]byte, 0, maxLookupBatch)
	for {
		select {
		case r := <-b.requests:
			batch = append(batch[:0], r)
		case <-b.done:
			return
		}
	collect:
		for len(batch) < maxLookupBatch {
			select {
			case r := <-b.requests:
				batch = append(batch, r)
			default:
				break collect
			}
		}
		hashes = hashes[:0]
		for i := range batch {
			hashes = append(hashes, batch[i].hash[:])
		}
		found, err := b.query(hashes)
		for _, r := range batch {
			r.reply <- lookupResult{key: found[r.hash], err: err}
		}
	}
}

func (b *lookupBatcher) query(hashes [][]byte) (map[domain.KeyHash]*domain.Key, error) {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	rows, err := b.pool.Query(ctx, `SELECT org_id, key_id, name, masked, key_hash, created_at, expires_at, revoked_at, version
		FROM key_lookup WHERE key_hash = ANY($1::bytea[])`, hashes)
	if err != nil {
		return nil, fmt.Errorf("lookup key: %w", eventstore.Unavailable(err))
	}
	found := make(map[domain.KeyHash]*domain.Key, len(hashes))
	var h []byte
	k := &domain.Key{}
	_, err = pgx.ForEachRow(rows, []any{&k.OrgID, &k.ID, &k.Name, &k.Masked, &h, &k.CreatedAt, &k.ExpiresAt, &k.RevokedAt, &k.Version}, func() error {
		key := *k
		copy(key.Hash[:], h)
		normalize(&key)
		found[key.Hash] = &key
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lookup key: %w", eventstore.Unavailable(err))
	}
	return found, nil
}
