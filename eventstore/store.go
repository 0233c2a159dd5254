package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
// events table, in the same transaction. Inline, each event is applied once,
// by the transaction that appends it, so a statement may insert a new
// stream's row without looking for it first (the append fails if it is
// there: only if the view disagrees with the log, or a new key's digest is
// another's). A projector that replays the log (a rebuild) must be idempotent:
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
	// lockWaits, those run again as an explicit transaction (commitAppends);
	// notifies counts the NOTIFYs sent (wake.go).
	appendGroups prometheus.Histogram
	groupsSplit  prometheus.Counter
	lockWaits    prometheus.Counter
	notifies     prometheus.Counter
}

var _ domain.EventStore = (*Store)(nil)

// New returns a store on pool. The inline projectors run inside every
// appending transaction.
func New(pool *pgxpool.Pool, inline ...Projector) *Store {
	s := &Store{pool: pool, inline: inline, commits: newCommits(),
		appendGroups: newAppendGroups(), groupsSplit: newGroupsSplit(), lockWaits: newLockWaits(), notifies: newNotifies()}
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

// appendBatch commits a group of appends in one transaction: the version
// checks, the idempotency claims, one insert of every event and the inline
// projectors' statements go as one pipelined batch. Postgres runs it as one
// implicit transaction, in one round trip, unless it waits on a lock for
// longer than fastLockTimeout; then the group runs again as an explicit
// transaction, in two (see commitAppends). The batch's context ends only
// when all of its callers have gone (see package coalesce), and then
// Postgres is asked to cancel it.
//
// A new stream (expected 0) needs no version check: the primary key on
// (key_id, stream_version) refuses a second version 1. If Postgres refused a
// statement of the group (and its callers are still there), nothing of it is
// committed, and when it had more than one append each is tried again alone,
// so that only the one in conflict (or with a bad value) fails, with its own
// error. That costs a round trip per append of the group: conflicts are rare
// (racing revocations of one key, a retried Idempotency-Key).
func (s *Store) appendBatch(ctx context.Context, reqs []appendRequest) []coalesce.Result[[]domain.Event] {
	results := make([]coalesce.Result[[]domain.Event], len(reqs))
	out, err := s.commitAppends(ctx, reqs)
	if len(reqs) > 1 && refused(err) && ctx.Err() == nil {
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

// fastLockTimeout is the longest the statements of a one-round-trip
// transaction wait on a lock (another transaction appending to the same
// stream, or claiming the same idempotency key; the swap of a views
// rebuild), after which the group runs again as an explicit transaction.
const fastLockTimeout = 20 * time.Millisecond

// commitAppends runs one transaction of appends and returns each one's
// events with their positions.
//
// It first sends the whole transaction at once (sendAsOneTransaction):
// Postgres commits it at the batch's end without waiting to hear from the
// client again. That leaves a window, the time Postgres takes to run the
// batch, in which losing the connection to Postgres makes a command fail
// that still commits; a lost COMMIT leaves the same doubt, and the time
// Postgres takes to run a batch is mostly its commit. But a batch stalled on
// a lock would widen that window to however long the lock is held. So the
// batch may wait on a lock for fastLockTimeout only: past that, it rolls back
// and runs again with a BEGIN of its own, and this process sends COMMIT
// only after reading every result, if a caller is still there
// (sendAndCommit). A command whose connection is lost while it waits on a
// lock then commits nothing, however soon the lock is let go.
func (s *Store) commitAppends(ctx context.Context, reqs []appendRequest) ([][]domain.Event, error) {
	out := make([][]domain.Event, len(reqs))
	var all []domain.Event
	for i, r := range reqs {
		all = append(all, r.events...)
		out[i] = make([]domain.Event, len(r.events))
	}
	fast, err := s.appendStatements(reqs, all, true)
	if err != nil {
		return nil, unsentError{err}
	}
	err = sendAsOneTransaction(ctx, s.pool, fast)
	if isLockTimeout(err) && ctx.Err() == nil {
		s.lockWaits.Inc()
		explicit, berr := s.appendStatements(reqs, all, false)
		if berr != nil {
			return nil, unsentError{berr}
		}
		err = sendAndCommit(ctx, s.pool, explicit)
	}
	if err != nil && ctx.Err() != nil { // every caller has gone, and the outcome is theirs
		return nil, fmt.Errorf("%w (every caller has gone: %v)", ctx.Err(), err)
	}
	if err != nil {
		return nil, err
	}
	n := 0
	for i := range out {
		n += copy(out[i], all[n:])
	}
	return out, nil
}

// appendStatements returns the batch of statements that appends reqs,
// whose events are all, in order. A batch for one round trip (fast) begins
// by setting its transaction's lock timeout; the other begins a transaction.
func (s *Store) appendStatements(reqs []appendRequest, all []domain.Event, fast bool) (*pgx.Batch, error) {
	b := &pgx.Batch{}
	if fast {
		setLocal(b, "lock_timeout", strconv.FormatInt(fastLockTimeout.Milliseconds(), 10))
	} else {
		b.BeginTx(pgx.TxOptions{})
	}
	for _, r := range reqs {
		if r.expected > 0 {
			b.Queue(`SELECT expect_stream_version($1, $2)`, r.events[0].KeyID, r.expected)
		}
		if r.idem != nil {
			claimIdempotency(b, r.idem)
		}
	}
	if err := s.queueEvents(b, all); err != nil {
		return nil, err
	}
	return b, nil
}

// setLocal queues the setting of a parameter for the batch's transaction
// alone, explicit or implicit.
func setLocal(b *pgx.Batch, name, value string) {
	b.Queue(`SELECT set_config($1, $2, true)`, name, value)
}

// isLockTimeout tells whether err is a statement's wait on a lock outlasting
// the lock timeout.
func isLockTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeLockNotAvailable
}

// refused tells whether a group's transaction failed for one of its appends:
// Postgres refused a statement (a conflict, a bad value), which rolled back
// the whole transaction, or an append could not be encoded, and nothing was
// sent. Any other error (Postgres out of reach, an error in this process
// while reading the results) is not one append's doing; and after the batch
// of a one-round-trip transaction has gone out, an error in this process
// does not stop Postgres from committing it, so that trying its appends
// again would fail them (or append them twice).
func refused(err error) bool {
	var pgErr *pgconn.PgError
	var u unavailableError
	var unsent unsentError
	return errors.As(err, &unsent) || errors.As(err, &pgErr) && !errors.As(Unavailable(err), &u)
}

// unsentError is an error met while building a group's batch, before
// anything was sent.
type unsentError struct{ error }

func (e unsentError) Unwrap() error { return e.error }

// cancelWait bounds how long a batch whose callers have all gone waits for
// Postgres to answer the requests to cancel it.
const cancelWait = time.Second

// sendAsOneTransaction sends b, which holds neither BEGIN nor COMMIT, in one
// round trip. Postgres runs the statements of a pipeline up to its end (its
// Sync) in one implicit transaction, which it commits there unless a
// statement fails; then it rolls all of them back. An explicit BEGIN and a
// COMMIT of their own cost a second round trip on the serial path of group
// commit: in alternating runs of the generate benchmark, one round trip
// reached 0.51 of the raw insert rate where two reached 0.48 (and 0.60
// against 0.47 in a first, shorter set).
//
// The batch is read to its end (see exchange), so that the outcome returned
// is the one Postgres reached: when Postgres is reachable, an error means
// that nothing was committed. A batch whose callers have all gone is
// cancelled, unless it was about to commit; then its callers (gone) hear
// success, as they would had they gone during a COMMIT.
func sendAsOneTransaction(ctx context.Context, pool *pgxpool.Pool, b *pgx.Batch) error {
	conn, err := acquire(ctx, pool)
	if err != nil {
		return err
	}
	defer conn.Release()
	return exchange(ctx, conn, b)
}

// acquire takes a connection of pool for a batch, unless ctx has ended
// (every caller has gone): then it sends nothing.
func acquire(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Conn, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		conn.Release()
		return nil, err
	}
	return conn, nil
}

// sendAndCommit sends b, which begins a transaction, reads its results to
// the end (see exchange), then commits the transaction if no statement
// failed and a caller is still there, or rolls it back. Postgres commits only
// what it hears COMMIT for: a batch that stalled (on a lock) and lost its
// connection meanwhile rolls back when it finds its client gone.
func sendAndCommit(ctx context.Context, pool *pgxpool.Pool, b *pgx.Batch) error {
	conn, err := acquire(ctx, pool)
	if err != nil {
		return err
	}
	defer conn.Release()
	err = exchange(ctx, conn, b)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		if !conn.Conn().IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelWait)
			defer cancel()
			if _, rerr := conn.Exec(rctx, "ROLLBACK"); rerr != nil {
				_ = conn.Conn().Close(rctx) // not back to the pool in a transaction
			}
		}
		return err
	}
	tag, err := conn.Exec(ctx, "COMMIT")
	if err == nil && tag.String() == "ROLLBACK" { // the transaction had failed after all
		err = pgx.ErrTxCommitRollback
	}
	return err
}

// exchange sends b on conn and reads its results to the end. When ctx ends
// first, Postgres is asked to cancel the statement running (or waiting on a
// lock), which then fails, and the rest of the batch with it; the request is
// sent again every cancelRetry until the batch ends, as one that arrives
// before the batch does finds nothing to cancel. Only if Postgres has not
// answered within cancelWait is the connection closed, and the batch's
// outcome unknown: the error is then Postgres being out of reach.
func exchange(ctx context.Context, conn *pgxpool.Conn, b *pgx.Batch) error {
	// The batch runs under a context of its own, which ends only if Postgres
	// does not answer in time: its end closes the connection, as pgx does
	// when a query's context ends.
	run, giveUp := context.WithCancel(context.WithoutCancel(ctx))
	defer giveUp()
	finished := make(chan struct{})
	cancelled := make(chan struct{})
	var answered bool
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		answered = cancelUntil(conn.Conn().PgConn(), finished, time.Now().Add(cancelWait))
		if !answered {
			giveUp()
		}
	})
	err := conn.SendBatch(run, b).Close()
	close(finished)
	if !stop() {
		// Cancel requests went out, the last perhaps after the batch ended.
		// The connection is used again only if each reached Postgres, so
		// that none can cancel the connection's next statement.
		<-cancelled
		if !answered {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}
	return err
}

// cancelRetry is how often exchange asks Postgres again to cancel a batch
// that has not ended.
const cancelRetry = 50 * time.Millisecond

// cancelUntil sends cancel requests for pg's session until finished is
// closed, one every cancelRetry, and reports whether each reached Postgres
// before deadline and the batch finished.
func cancelUntil(pg *pgconn.PgConn, finished <-chan struct{}, deadline time.Time) bool {
	for {
		cctx, done := context.WithDeadline(context.Background(), deadline)
		err := pg.CancelRequest(cctx)
		done()
		if err != nil {
			return false
		}
		select {
		case <-finished:
			return true
		case <-time.After(min(cancelRetry, time.Until(deadline))):
		}
		if !time.Now().Before(deadline) {
			return false
		}
	}
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
