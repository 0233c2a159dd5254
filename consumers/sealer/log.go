package sealer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// Log reads the sealed audit log.
type Log struct {
	pool *pgxpool.Pool
}

// NewLog returns a reader of the audit log in pool's database.
func NewLog(pool *pgxpool.Pool) *Log { return &Log{pool: pool} }

// Checkpoint returns the latest signed checkpoint, as a signed note.
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) {
	signed, _, err := latestCheckpoint(ctx, l.pool)
	if err != nil {
		return nil, err
	}
	return []byte(signed), nil
}

// latestCheckpoint reads the latest signed checkpoint through q: its signed
// note and its tree size; not_found if none was signed yet.
func latestCheckpoint(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (string, int64, error) {
	var signed string
	var size int64
	err := q.QueryRow(ctx, `SELECT note, tree_size FROM checkpoints ORDER BY tree_size DESC LIMIT 1`).Scan(&signed, &size)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, domain.Errorf(domain.ENotFound, "no checkpoint has been signed yet: nothing is sealed")
	}
	if err != nil {
		return "", 0, fmt.Errorf("latest checkpoint: %w", eventstore.Unavailable(err))
	}
	return signed, size, nil
}

// Size returns the number of sealed events: the size of the largest tree
// that proofs can be asked against.
func (l *Log) Size(ctx context.Context) (uint64, error) {
	var n int64
	if err := l.pool.QueryRow(ctx, `SELECT coalesce(max(seq) + 1, 0) FROM seals`).Scan(&n); err != nil {
		return 0, fmt.Errorf("audit log size: %w", eventstore.Unavailable(err))
	}
	return uint64(n), nil
}

// InclusionProof proves that the event sealed at seq is in the tree of size
// leaves; size 0 means the latest checkpoint's.
func (l *Log) InclusionProof(ctx context.Context, seq, size uint64) (audit.Inclusion, error) {
	size, err := l.checkSize(ctx, size)
	if err != nil {
		return audit.Inclusion{}, err
	}
	if seq >= size {
		return audit.Inclusion{}, domain.Errorf(domain.EInvalid, "seq %d is not in a tree of size %d: seq must be below size", seq, size)
	}
	fetch := nodeFetcher(ctx, l.pool)
	leaf, err := fetch(leafID(seq))
	if err != nil {
		return audit.Inclusion{}, err
	}
	p, err := audit.InclusionProof(seq, size, fetch)
	if err != nil {
		return audit.Inclusion{}, err
	}
	root, err := audit.RootAt(size, fetch)
	if err != nil {
		return audit.Inclusion{}, err
	}
	return audit.Inclusion{Seq: seq, TreeSize: size, LeafHash: hex.EncodeToString(leaf[0]),
		RootHash: hex.EncodeToString(root), Proof: audit.Hex(p)}, nil
}

// ConsistencyProof proves that the tree of from leaves is a prefix of the
// tree of to leaves; to 0 means the latest checkpoint's size.
func (l *Log) ConsistencyProof(ctx context.Context, from, to uint64) (audit.Consistency, error) {
	to, err := l.checkSize(ctx, to)
	if err != nil {
		return audit.Consistency{}, err
	}
	if from == 0 || from > to {
		return audit.Consistency{}, domain.Errorf(domain.EInvalid, "from must be from 1 to %d (to), got %d", to, from)
	}
	fetch := nodeFetcher(ctx, l.pool)
	p, err := audit.ConsistencyProof(from, to, fetch)
	if err != nil {
		return audit.Consistency{}, err
	}
	root1, err := audit.RootAt(from, fetch)
	if err != nil {
		return audit.Consistency{}, err
	}
	root2, err := audit.RootAt(to, fetch)
	if err != nil {
		return audit.Consistency{}, err
	}
	return audit.Consistency{From: from, To: to, FromRoot: hex.EncodeToString(root1), ToRoot: hex.EncodeToString(root2),
		Proof: audit.Hex(p)}, nil
}

// checkSize returns size, or the latest checkpoint's size for 0, refusing a
// size beyond what is sealed.
func (l *Log) checkSize(ctx context.Context, size uint64) (uint64, error) {
	if size == 0 {
		_, n, err := latestCheckpoint(ctx, l.pool)
		return uint64(n), err
	}
	sealed, err := l.Size(ctx)
	if err != nil {
		return 0, err
	}
	if size > sealed {
		return 0, domain.Errorf(domain.EInvalid, "tree size %d is beyond the sealed log, which has %d events", size, sealed)
	}
	return size, nil
}

// Annotate sets the seal of each sealed event among events.
func (l *Log) Annotate(ctx context.Context, events []domain.Event) error {
	if len(events) == 0 {
		return nil
	}
	positions := make([]int64, len(events))
	for i, e := range events {
		positions[i] = e.Position
	}
	rows, err := l.pool.Query(ctx, `SELECT position, seq, leaf_hash FROM seals WHERE position = ANY($1)`, positions)
	if err != nil {
		return fmt.Errorf("seals: %w", eventstore.Unavailable(err))
	}
	seals := make(map[int64]*domain.Seal, len(events))
	var pos, seq int64
	var hash []byte
	if _, err := pgx.ForEachRow(rows, []any{&pos, &seq, &hash}, func() error {
		seals[pos] = &domain.Seal{Seq: seq, Hash: hex.EncodeToString(hash)}
		return nil
	}); err != nil {
		return fmt.Errorf("seals: %w", eventstore.Unavailable(err))
	}
	for i := range events {
		events[i].Seal = seals[events[i].Position]
	}
	return nil
}

// SealedEvents reads events from the store with their seals: the event log
// of the HTTP API.
type SealedEvents struct {
	Store *eventstore.Store
	Log   *Log
}

// Load returns one key's events, in version order, with their seals.
func (s SealedEvents) Load(ctx context.Context, orgID, keyID string) ([]domain.Event, error) {
	events, err := s.Store.Load(ctx, orgID, keyID)
	if err != nil {
		return nil, err
	}
	return events, s.Log.Annotate(ctx, events)
}

// OrgLog returns a page of an organization's audit log with the seals.
func (s SealedEvents) OrgLog(ctx context.Context, orgID, after string, limit int) ([]domain.Event, string, error) {
	events, next, err := s.Store.OrgLog(ctx, orgID, after, limit)
	if err != nil {
		return nil, "", err
	}
	return events, next, s.Log.Annotate(ctx, events)
}
