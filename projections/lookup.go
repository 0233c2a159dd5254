package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/coalesce"
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
	// lookupTimeout bounds one query.
	lookupTimeout = 5 * time.Second
)

// lookupBatcher runs the coalesced lookups of LookupKey.
type lookupBatcher struct {
	pool  *pgxpool.Pool
	group *coalesce.Group[domain.KeyHash, *domain.Key]
}

// newLookupBatcher runs up to half the pool's connections' worth of lookup
// queries at a time (at least one), so that lookups never starve the command
// path of connections.
func newLookupBatcher(pool *pgxpool.Pool) *lookupBatcher {
	b := &lookupBatcher{pool: pool}
	b.group = coalesce.New(int(pool.Config().MaxConns)/2, maxLookupBatch, b.run)
	return b
}

func (b *lookupBatcher) lookup(ctx context.Context, hash domain.KeyHash) (*domain.Key, error) {
	k, err := b.group.Do(ctx, hash)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("lookup key: %w", eventstore.Unavailable(ctx.Err()))
	}
	return k, err
}

// run answers a batch of lookups with one query.
func (b *lookupBatcher) run(ctx context.Context, hashes []domain.KeyHash) []coalesce.Result[*domain.Key] {
	out := make([]coalesce.Result[*domain.Key], len(hashes))
	found, err := b.query(ctx, hashes)
	for i, h := range hashes {
		out[i] = coalesce.Result[*domain.Key]{Value: found[h], Err: err}
	}
	return out
}

func (b *lookupBatcher) query(ctx context.Context, hashes []domain.KeyHash) (map[domain.KeyHash]*domain.Key, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	digests := make([][]byte, len(hashes))
	for i := range hashes {
		digests[i] = hashes[i][:]
	}
	rows, err := b.pool.Query(ctx, `SELECT org_id, key_id, name, masked, key_hash, created_at, expires_at, revoked_at, version
		FROM key_lookup WHERE key_hash = ANY($1::bytea[])`, digests)
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
