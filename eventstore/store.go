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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/coalesce"
)

// Projector keeps a view current. Queue adds to b the statements that apply
// events, in ledger order; b is then sent in the transaction that appends the
// events (or that rebuilds the view), in one round trip. Positions are not
// known yet when Queue runs; a statement that needs one reads it from the
// events table, in the same transaction. The statements must be idempotent:
// applying an event twice leaves the view as applying it once.
type Projector interface {
	Queue(b *pgx.Batch, events []domain.Event) error
}

// Store is the Postgres event store. It implements domain.EventStore.
type Store struct {
	pool    *pgxpool.Pool
	inline  []Projector
	commits *commits
	appends *coalesce.Group[appendRequest, []domain.Event]
	// appendGroups observes the appends of each committed transaction;
	// groupsSplit counts the groups tried again one append at a time;
	// notifies counts the NOTIFYs sent (wake.go).
	appendGroups prometheus.Histogram
	groupsSplit  prometheus.Counter
	notifies     prometheus.Counter
}

var _ domain.EventStore = (*Store)(nil)

// New returns a store on pool. The inline projectors run inside every
// appending transaction.
func New(pool *pgxpool.Pool, inline ...Projector) *Store {
	s := &Store{pool: pool, inline: inline, commits: newCommits(),
		appendGroups: newAppendGroups(), groupsSplit: newGroupsSplit(), notifies: newNotifies()}
	s.appends = coalesce.New(appendWorkers(pool), maxAppendBatch, s.appendBatch)
	return s
}

// maxAppendBatch bounds the appends that commit together.
const maxAppendBatch = 64

// appendWorkers is how many appending transactions run at once: one per 16
// of the pool's connections (at least one), so one for serve's default pool.
// Fewer transactions at a time make larger groups, which cost Postgres less
// per key, and leave the other connections to the readers. In the generate
// benchmark (32 clients, pool of 16), 4 workers committed 4.2 keys per
// transaction, 2 committed 7.4 and 1 committed 15, each faster than the one
// before (1 against 2: 7,000 to 7,600 keys/s against 6,600).
func appendWorkers(pool *pgxpool.Pool) int {
	return max(1, int(pool.Config().MaxConns)/16)
}

// Pool returns the store's connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Load returns one key's events in version order; none if the key does not
// exist in that organization.
func (s *Store) Load(ctx context.Context, orgID, keyID string) ([]domain.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+` FROM events e
		WHERE key_id = $1 AND org_id = $2 ORDER BY e.stream_version`, keyID, orgID)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", keyID, Unavailable(err))
	}
	events, _, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", keyID, Unavailable(err))
	}
	return events, nil
}

// appendRequest is one Append call: events of one stream, which must stand
// at version expected, and the idempotency record to claim, if any.
type appendRequest struct {
	expected int64
	events   []domain.Event
	idem     *domain.IdempotencyRecord
}

// Append commits events to the end of their stream (all events of one call
// belong to one key), which must stand at version expected. It returns the
// events with their positions.
//
// Concurrent appends commit together (group commit, see appendBatch): under
// load, one transaction, one round trip of statements and one WAL flush
// serve many commands, which is what lets a small machine generate keys
// faster than it commits single-row transactions. Alone, an append is its
// own transaction.
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
	out, err := s.appends.Do(ctx, appendRequest{expected: expected, events: events, idem: idem})
	if err != nil {
		return nil, fmt.Errorf("append %s: %w", keyID, appendError(err))
	}
	return out, nil
}

// appendBatch commits a group of appends in one transaction, which takes two
// round trips: BEGIN, the version checks, the idempotency claims, one insert
// of every event and the inline projectors' statements go as one pipelined
// batch, then COMMIT. COMMIT is kept apart so that Postgres commits only what
// a client still connected asks it to: a batch that ended in an implicit
// commit would commit after its client had gone, and a command answered 503
// would have taken effect. The batch's context ends only when all of its
// callers have gone (see package coalesce).
//
// A new stream (expected 0) needs no version check: the primary key on
// (key_id, stream_version) refuses a second version 1. If the group fails
// for any reason but Postgres being out of reach (or all of its callers
// gone), nothing of it is committed, and when it had more than one append
// each is tried again alone,
// so that only the one in conflict (or with a bad value) fails, with its own
// error. That costs a round trip or two per append of the group: conflicts
// are rare (racing revocations of one key, a retried Idempotency-Key).
func (s *Store) appendBatch(ctx context.Context, reqs []appendRequest) []coalesce.Result[[]domain.Event] {
	results := make([]coalesce.Result[[]domain.Event], len(reqs))
	out, err := s.commitAppends(ctx, reqs)
	if err != nil && len(reqs) > 1 && !unavailable(err) && ctx.Err() == nil {
		s.groupsSplit.Inc()
		for i := range reqs {
			results[i] = s.appendBatch(ctx, reqs[i:i+1])[0]
		}
		return results
	}
	if err != nil {
		for i := range results {
			results[i].Err = err
		}
		return results
	}
	for i := range results {
		results[i].Value = out[i]
	}
	s.appendGroups.Observe(float64(len(reqs)))
	s.commits.signal()
	return results
}

// commitAppends runs one transaction of appends and returns each one's
// events with their positions.
func (s *Store) commitAppends(ctx context.Context, reqs []appendRequest) ([][]domain.Event, error) {
	out := make([][]domain.Event, len(reqs))
	var all []domain.Event
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	for i, r := range reqs {
		if r.expected > 0 {
			b.Queue(`SELECT expect_stream_version($1, $2)`, r.events[0].KeyID, r.expected)
		}
		if r.idem != nil {
			claimIdempotency(b, r.idem)
		}
		all = append(all, r.events...)
		out[i] = make([]domain.Event, len(r.events))
	}
	if err := s.queueEvents(b, all); err != nil {
		return nil, err
	}
	if err := sendAndCommit(ctx, s.pool, b); err != nil {
		return nil, err
	}
	n := 0
	for i := range out {
		n += copy(out[i], all[n:])
	}
	return out, nil
}

// unavailable tells whether err means Postgres could not be reached, as
// opposed to refusing one append of a group (a conflict, a bad value).
func unavailable(err error) bool {
	var u unavailableError
	return errors.As(Unavailable(err), &u)
}

// sendAndCommit sends a batch that begins a transaction, then commits it, or
// rolls it back if any statement failed.
func sendAndCommit(ctx context.Context, pool *pgxpool.Pool, b *pgx.Batch) error {
	br := pool.SendBatch(ctx, b)
	tx := br.Tx()
	err := br.Close()
	if tx == nil { // the batch never began: no connection, or no BEGIN
		return err
	}
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	return tx.Commit(ctx)
}

// queueEvents queues one insert of events, in order, which sets their
// positions when the batch runs, and the inline projectors' statements.
func (s *Store) queueEvents(b *pgx.Batch, events []domain.Event) error {
	var c struct {
		ids, orgs, keys, types, actors, data []string
		versions                             []int64
		at                                   []time.Time
	}
	index := make(map[string]int, len(events))
	for i := range events {
		e := &events[i]
		data, err := json.Marshal(e.Data)
		if err != nil {
			return fmt.Errorf("encode %s: %w", e.Type, err)
		}
		index[e.ID] = i
		c.ids = append(c.ids, e.ID)
		c.orgs = append(c.orgs, e.OrgID)
		c.keys = append(c.keys, e.KeyID)
		c.versions = append(c.versions, e.StreamVersion)
		c.types = append(c.types, e.Type)
		c.actors = append(c.actors, e.Actor)
		c.at = append(c.at, e.OccurredAt)
		c.data = append(c.data, string(data))
	}
	// Positions come from the identity in the order the rows are inserted,
	// which ORDER BY n makes the order of events.
	b.Queue(`INSERT INTO events (id, org_id, key_id, stream_version, type, actor, occurred_at, data)
		SELECT id::uuid, org_id, key_id, stream_version, type, actor, occurred_at, data::jsonb
		FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::timestamptz[], $8::text[])
			WITH ORDINALITY AS e(id, org_id, key_id, stream_version, type, actor, occurred_at, data, n)
		ORDER BY n
		RETURNING id::text, position`,
		c.ids, c.orgs, c.keys, c.versions, c.types, c.actors, c.at, c.data,
	).Query(func(rows pgx.Rows) error {
		var id string
		var position int64
		_, err := pgx.ForEachRow(rows, []any{&id, &position}, func() error {
			events[index[id]].Position = position
			return nil
		})
		return err
	})
	for _, p := range s.inline {
		if err := p.Queue(b, events); err != nil {
			return err
		}
	}
	return nil
}

// claimIdempotency queues the claim of an idempotency key: a record older
// than the window is dropped, then the insert fails on the primary key if a
// live record holds the key (appendError reads that as
// domain.ErrIdempotencyTaken).
func claimIdempotency(b *pgx.Batch, r *domain.IdempotencyRecord) {
	b.Queue(`DELETE FROM idempotency_keys WHERE org_id = $1 AND idem_key = $2 AND created_at < now() - $3::interval`,
		r.OrgID, r.Key, domain.IdempotencyWindow.String())
	b.Queue(`INSERT INTO idempotency_keys (org_id, idem_key, request_hash, key_id) VALUES ($1, $2, $3, $4)`,
		r.OrgID, r.Key, r.RequestHash, r.KeyID)
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
	raw, err := ScanRawEvents(rows)
	if err != nil || len(raw) == 0 {
		return nil, Cursor{}, err
	}
	events, err := decodeEvents(raw)
	if err != nil {
		return nil, Cursor{}, err
	}
	return events, raw[len(raw)-1].Cursor, nil
}

// decodeEvents decodes events as stored.
func decodeEvents(raw []RawEvent) ([]domain.Event, error) {
	events := make([]domain.Event, len(raw))
	for i, r := range raw {
		d, err := domain.DecodeData(r.Type, r.Data)
		if err != nil {
			return nil, fmt.Errorf("event %s: %w", r.ID, err)
		}
		events[i] = domain.Event{ID: r.ID, Type: r.Type, OrgID: r.OrgID, KeyID: r.KeyID, StreamVersion: r.StreamVersion,
			OccurredAt: r.OccurredAt.UTC(), Actor: r.Actor, Data: d, Position: r.Cursor.Position}
	}
	return events, nil
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
		b := &pgx.Batch{}
		for _, p := range s.inline {
			if err := p.Queue(b, out); err != nil {
				return err
			}
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("import %d events: %w", len(events), appendError(err))
	}
	s.commits.signal()
	return out, nil
}

// appendError translates a failed append: a unique violation on (key_id,
// stream_version) is the same conflict as a failed version check, and a
// unique violation on the idempotency key means another request holds it.
func appendError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == codeVersionMismatch,
			pgErr.Code == codeUniqueViolation && pgErr.ConstraintName == "events_stream_version":
			return domain.ErrConflict
		case pgErr.Code == codeUniqueViolation && pgErr.ConstraintName == "idempotency_keys_pkey":
			return domain.ErrIdempotencyTaken
		}
	}
	return Unavailable(err)
}
