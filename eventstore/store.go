package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/domain"
)

// Projector keeps a view current. Apply receives committed-to-be events in
// ledger order, inside the transaction that appends them (or that rebuilds
// the view), and must be idempotent: applying an event twice leaves the view
// as applying it once.
type Projector interface {
	Apply(ctx context.Context, tx pgx.Tx, events []domain.Event) error
}

// Store is the Postgres event store. It implements domain.EventStore.
type Store struct {
	pool   *pgxpool.Pool
	inline []Projector
}

var _ domain.EventStore = (*Store)(nil)

// New returns a store on pool. The inline projectors run inside every
// appending transaction.
func New(pool *pgxpool.Pool, inline ...Projector) *Store {
	return &Store{pool: pool, inline: inline}
}

// Pool returns the store's connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

const eventColumns = `position, transaction_id::text, id::text, org_id, key_id, stream_version, type, actor, occurred_at, data`

// Load returns one key's events in version order; none if the key does not
// exist in that organization.
func (s *Store) Load(ctx context.Context, orgID, keyID string) ([]domain.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+` FROM events
		WHERE key_id = $1 AND org_id = $2 ORDER BY stream_version`, keyID, orgID)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", keyID, Unavailable(err))
	}
	events, _, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", keyID, Unavailable(err))
	}
	return events, nil
}

// Append commits events to the end of their stream (all events of one call
// belong to one key), which must stand at version expected. It returns the
// events with their positions.
func (s *Store) Append(ctx context.Context, expected int64, events []domain.Event, idem *domain.IdempotencyRecord) ([]domain.Event, error) {
	if len(events) == 0 {
		return nil, nil
	}
	keyID := events[0].KeyID
	for i, e := range events {
		if e.KeyID != keyID || e.StreamVersion != expected+int64(i)+1 {
			return nil, fmt.Errorf("append %s: events must be one stream's next versions", keyID)
		}
	}
	out := make([]domain.Event, len(events))
	copy(out, events)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var current int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(stream_version), 0) FROM events WHERE key_id = $1`, keyID).Scan(&current); err != nil {
			return err
		}
		if current != expected {
			return domain.ErrConflict
		}
		if idem != nil {
			if err := claimIdempotency(ctx, tx, idem); err != nil {
				return err
			}
		}
		if err := insertEvents(ctx, tx, out); err != nil {
			return err
		}
		for _, p := range s.inline {
			if err := p.Apply(ctx, tx, out); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("append %s: %w", keyID, appendError(err))
	}
	return out, nil
}

// insertEvents inserts events and sets their positions.
func insertEvents(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	batch := &pgx.Batch{}
	for i := range events {
		e := &events[i]
		data, err := json.Marshal(e.Data)
		if err != nil {
			return fmt.Errorf("encode %s: %w", e.Type, err)
		}
		batch.Queue(`INSERT INTO events (id, org_id, key_id, stream_version, type, actor, occurred_at, data)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING position`,
			e.ID, e.OrgID, e.KeyID, e.StreamVersion, e.Type, e.Actor, e.OccurredAt, data,
		).QueryRow(func(row pgx.Row) error { return row.Scan(&e.Position) })
	}
	return tx.SendBatch(ctx, batch).Close()
}

// claimIdempotency writes an idempotency record, or takes over one older than
// the window. A live record of another request means the key is taken.
func claimIdempotency(ctx context.Context, tx pgx.Tx, r *domain.IdempotencyRecord) error {
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (org_id, idem_key, request_hash, key_id, created_at)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (org_id, idem_key) DO UPDATE
			SET request_hash = excluded.request_hash, key_id = excluded.key_id, created_at = excluded.created_at
			WHERE idempotency_keys.created_at < now() - $5::interval`,
		r.OrgID, r.Key, r.RequestHash, r.KeyID, domain.IdempotencyWindow.String())
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return domain.ErrIdempotencyTaken
	}
	return nil
}

// LookupIdempotency returns the record of an idempotency key used at or after
// since.
func (s *Store) LookupIdempotency(ctx context.Context, orgID, key string, since time.Time) (domain.IdempotencyRecord, bool, error) {
	r := domain.IdempotencyRecord{OrgID: orgID, Key: key}
	err := s.pool.QueryRow(ctx, `SELECT request_hash, key_id FROM idempotency_keys
		WHERE org_id = $1 AND idem_key = $2 AND created_at >= $3`, orgID, key, since).Scan(&r.RequestHash, &r.KeyID)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("idempotency lookup: %w", Unavailable(err))
	}
	return r, true, nil
}

// scanEvents reads rows of eventColumns and returns the events with the
// ledger cursor of the last one.
func scanEvents(rows pgx.Rows) ([]domain.Event, Cursor, error) {
	defer rows.Close()
	var events []domain.Event
	var last Cursor
	for rows.Next() {
		var e domain.Event
		var xid string
		var data []byte
		if err := rows.Scan(&e.Position, &xid, &e.ID, &e.OrgID, &e.KeyID, &e.StreamVersion, &e.Type, &e.Actor, &e.OccurredAt, &data); err != nil {
			return nil, last, err
		}
		e.OccurredAt = e.OccurredAt.UTC()
		d, err := domain.DecodeData(e.Type, data)
		if err != nil {
			return nil, last, fmt.Errorf("event %s: %w", e.ID, err)
		}
		e.Data = d
		c, err := cursorOf(xid, e.Position)
		if err != nil {
			return nil, last, err
		}
		last = c
		events = append(events, e)
	}
	return events, last, rows.Err()
}

// Import appends many new events in one transaction with COPY, and runs the
// inline projectors on them: the bulk path for loading a ledger (benchmarks,
// migrations from another system). Every event must be the next version of
// its stream, as in Append, but versions are checked only by the unique
// constraint, so a conflict fails the whole import. It returns the events
// with their positions.
func (s *Store) Import(ctx context.Context, events []domain.Event) ([]domain.Event, error) {
	out := make([]domain.Event, len(events))
	copy(out, events)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows := make([][]any, len(out))
		for i, e := range out {
			data, err := json.Marshal(e.Data)
			if err != nil {
				return fmt.Errorf("encode %s: %w", e.Type, err)
			}
			rows[i] = []any{e.ID, e.OrgID, e.KeyID, e.StreamVersion, e.Type, e.Actor, e.OccurredAt, data}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
			[]string{"id", "org_id", "key_id", "stream_version", "type", "actor", "occurred_at", "data"},
			pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		ids := make([]string, len(out))
		for i, e := range out {
			ids[i] = e.ID
		}
		positions := make(map[string]int64, len(out))
		r, err := tx.Query(ctx, `SELECT id::text, position FROM events WHERE id = ANY($1::uuid[])`, ids)
		if err != nil {
			return err
		}
		var id string
		var pos int64
		if _, err := pgx.ForEachRow(r, []any{&id, &pos}, func() error { positions[id] = pos; return nil }); err != nil {
			return err
		}
		for i := range out {
			out[i].Position = positions[out[i].ID]
		}
		for _, p := range s.inline {
			if err := p.Apply(ctx, tx, out); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("import %d events: %w", len(events), appendError(err))
	}
	return out, nil
}

// appendError translates a failed append: a unique violation on (key_id,
// stream_version) is the same conflict as a failed version check.
func appendError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == codeUniqueViolation && pgErr.ConstraintName == "events_stream_version" {
		return domain.ErrConflict
	}
	return Unavailable(err)
}
