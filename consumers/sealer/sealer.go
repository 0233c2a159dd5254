package sealer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// LeaderName is the name the sealers of one database compete for.
const LeaderName = "sealer"

// Options are the sealer's settings; zero values take the defaults.
type Options struct {
	// Signer signs checkpoints; its name is the log's origin. Required.
	Signer note.Signer
	// Batch is how many events one sealing transaction takes (default 5000).
	Batch int
	// Poll is how often the sealer looks for events when no wake-up came
	// (default 1s): wake-ups are hints and can be lost.
	Poll time.Duration
	// CheckpointEvery is the shortest time between two checkpoints (default
	// 1s). A checkpoint is written only when events were sealed since the
	// last one.
	CheckpointEvery time.Duration
	// LeaderInterval is how often a candidate tries to lead and a leader
	// checks its connection (default 2s).
	LeaderInterval time.Duration
	Logger         *slog.Logger
	// Registry receives the sealer's metrics, if not nil.
	Registry prometheus.Registerer
	// ObserveLag, if not nil, is told the lag of each sealed event: the time
	// from its occurred_at to the commit of its seal.
	ObserveLag func(time.Duration)
	Now        func() time.Time
}

// Sealer seals the ledger. Run it with Run; one process among those sharing
// the database seals at a time.
type Sealer struct {
	store   *eventstore.Store
	pool    *pgxpool.Pool
	o       Options
	metrics *metrics
}

// New returns a sealer of store's ledger.
func New(store *eventstore.Store, o Options) (*Sealer, error) {
	if o.Signer == nil {
		return nil, errors.New("sealer: a checkpoint signer is required")
	}
	if o.Batch <= 0 {
		o.Batch = 5000
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = time.Second
	}
	if o.LeaderInterval <= 0 {
		o.LeaderInterval = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Sealer{store: store, pool: store.Pool(), o: o, metrics: newMetrics(o.Registry)}, nil
}

type metrics struct {
	lag        prometheus.Histogram
	sealed     prometheus.Counter
	treeSize   prometheus.Gauge
	checkpoint prometheus.Gauge
	leading    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keyledger_seal_lag_seconds",
			Help:    "Time from an event's occurred_at to the commit of its seal.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		sealed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keyledger_sealed_events_total", Help: "Events sealed by this process.",
		}),
		treeSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyledger_audit_tree_size", Help: "Leaves in the audit log's Merkle tree, as this process last sealed.",
		}),
		checkpoint: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyledger_audit_checkpoint_size", Help: "Tree size of the last checkpoint this process signed.",
		}),
		leading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyledger_sealer_leading", Help: "1 while this process is the active sealer.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.lag, m.sealed, m.treeSize, m.checkpoint, m.leading)
	}
	return m
}

// Run seals while this process leads, until ctx ends.
func (s *Sealer) Run(ctx context.Context) {
	eventstore.Lead(ctx, s.pool, LeaderName, s.o.LeaderInterval, s.o.Logger,
		func(leading bool) {
			if leading {
				s.metrics.leading.Set(1)
			} else {
				s.metrics.leading.Set(0)
			}
		}, s.lead)
}

// lead seals as the leader: on each wake-up or poll, everything committed,
// then a checkpoint when one is due.
func (s *Sealer) lead(ctx context.Context) error {
	wake := s.store.Wakeups(ctx, s.o.Logger)
	st, err := s.load(ctx)
	if err != nil {
		return err
	}
	poll := time.NewTicker(s.o.Poll)
	defer poll.Stop()
	for {
		if err := s.sealAll(ctx, st); err != nil {
			return err
		}
		var due <-chan time.Time
		var timer *time.Timer
		if st.size > st.checkpointSize {
			wait := st.checkpointAt.Add(s.o.CheckpointEvery).Sub(s.o.Now())
			if wait <= 0 {
				if err := s.checkpoint(ctx, st); err != nil {
					return err
				}
			} else {
				timer = time.NewTimer(wait)
				due = timer.C
			}
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-poll.C:
		case <-due:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// CatchUp seals every event committed before the call and signs a
// checkpoint of the result, without competing for leadership: for tools and
// tests that know no other sealer runs. It returns the tree size. An event
// becomes sealable when every transaction older than its own has ended (the
// xid8 horizon), so CatchUp waits for transactions still open, in any
// database of the server.
func (s *Sealer) CatchUp(ctx context.Context) (uint64, error) {
	st, err := s.load(ctx)
	if err != nil {
		return 0, err
	}
	for {
		if err := s.sealAll(ctx, st); err != nil {
			return st.size, err
		}
		pending, err := s.store.Pending(ctx, st.cursor)
		if err != nil {
			return st.size, err
		}
		if !pending {
			break
		}
		select {
		case <-ctx.Done():
			return st.size, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	if st.size > st.checkpointSize {
		if err := s.checkpoint(ctx, st); err != nil {
			return st.size, err
		}
	}
	return st.size, nil
}

// state is what the sealer knows of the sealed log.
type state struct {
	size     uint64            // leaves sealed
	cursor   eventstore.Cursor // ledger cursor of the last sealed event
	rng      *compact.Range    // compact range of [0, size)
	orgHeads map[string]int64  // seq of each organization's last sealed event

	checkpointSize uint64
	checkpointAt   time.Time
}

// load reads the state of the sealed log from the database.
func (s *Sealer) load(ctx context.Context) (*state, error) {
	st := &state{orgHeads: map[string]int64{}}
	var seq int64
	var xid *string
	var pos int64
	err := s.pool.QueryRow(ctx, `SELECT s.seq, e.transaction_id::text, s.position
		FROM seals s LEFT JOIN events e ON e.position = s.position ORDER BY s.seq DESC LIMIT 1`).Scan(&seq, &xid, &pos)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		st.rng = audit.NewRange()
	case err != nil:
		return nil, fmt.Errorf("sealer: load: %w", eventstore.Unavailable(err))
	case xid == nil:
		return nil, fmt.Errorf("sealer: the event of seq %d (position %d) is missing from the events table; refusing to seal (run keyledger audit verify)", seq, pos)
	default:
		st.size = uint64(seq) + 1
		c, err := eventstore.ParseXid(*xid)
		if err != nil {
			return nil, err
		}
		st.cursor = eventstore.Cursor{Xid: c, Position: pos}
		if st.rng, err = audit.RangeAt(st.size, nodeFetcher(ctx, s.pool)); err != nil {
			return nil, fmt.Errorf("sealer: load the tree: %w", err)
		}
	}
	var size int64
	err = s.pool.QueryRow(ctx, `SELECT tree_size, created_at FROM checkpoints ORDER BY tree_size DESC LIMIT 1`).Scan(&size, &st.checkpointAt)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("sealer: load: %w", eventstore.Unavailable(err))
	}
	st.checkpointSize = uint64(size)
	s.metrics.treeSize.Set(float64(st.size))
	return st, nil
}

// sealAll seals batches until none is full.
func (s *Sealer) sealAll(ctx context.Context, st *state) error {
	for {
		n, err := s.sealBatch(ctx, st)
		if err != nil {
			return err
		}
		if n < s.o.Batch {
			return nil
		}
	}
}

// sealBatch seals the next batch of committed events in one transaction and
// returns how many it sealed. On error the state is stale: the caller must
// load it again.
func (s *Sealer) sealBatch(ctx context.Context, st *state) (int, error) {
	events, cursor, err := s.store.TailRaw(ctx, st.cursor, s.o.Batch)
	if err != nil || len(events) == 0 {
		return 0, err
	}
	if err := s.loadOrgHeads(ctx, st, events); err != nil {
		return 0, err
	}
	seals := make([][]any, len(events))
	var nodes [][]any
	visit := func(id compact.NodeID, hash []byte) {
		if id.Level >= storedLevel {
			nodes = append(nodes, []any{int16(id.Level), int64(id.Index), hash})
		}
	}
	for i, e := range events {
		seq := int64(st.size) + int64(i)
		leaf := leafOf(e, seq, nil)
		if prev, ok := st.orgHeads[e.OrgID]; ok && prev >= 0 {
			leaf.OrgPrevSeq = &prev
		}
		hash, err := leaf.Hash()
		if err != nil {
			return 0, fmt.Errorf("sealer: event %s: %w", e.ID, err)
		}
		if err := st.rng.Append(hash, visit); err != nil {
			return 0, err
		}
		st.orgHeads[e.OrgID] = seq
		seals[i] = []any{seq, e.Cursor.Position, e.ID, e.OrgID, leaf.OrgPrevSeq, hash}
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"seals"},
			[]string{"seq", "position", "event_id", "org_id", "org_prev_seq", "leaf_hash"}, pgx.CopyFromRows(seals)); err != nil {
			return err
		}
		if len(nodes) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"merkle_nodes"}, []string{"level", "idx", "hash"}, pgx.CopyFromRows(nodes)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sealer: seal seq %d to %d: %w", st.size, st.size+uint64(len(events))-1, eventstore.Unavailable(err))
	}
	st.size += uint64(len(events))
	st.cursor = cursor
	now := s.o.Now()
	for _, e := range events {
		lag := now.Sub(e.OccurredAt)
		s.metrics.lag.Observe(lag.Seconds())
		if s.o.ObserveLag != nil {
			s.o.ObserveLag(lag)
		}
	}
	s.metrics.sealed.Add(float64(len(events)))
	s.metrics.treeSize.Set(float64(st.size))
	return len(events), nil
}

// loadOrgHeads looks up the last sealed seq of the batch's organizations
// that the state does not know yet (-1 for one with none).
func (s *Sealer) loadOrgHeads(ctx context.Context, st *state, events []eventstore.RawEvent) error {
	var unknown []string
	seen := map[string]bool{}
	for _, e := range events {
		if _, ok := st.orgHeads[e.OrgID]; !ok && !seen[e.OrgID] {
			seen[e.OrgID] = true
			unknown = append(unknown, e.OrgID)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	rows, err := s.pool.Query(ctx, `SELECT o, coalesce((SELECT max(seq) FROM seals WHERE org_id = o), -1)
		FROM unnest($1::text[]) AS o`, unknown)
	if err != nil {
		return fmt.Errorf("sealer: organizations' last seals: %w", eventstore.Unavailable(err))
	}
	var org string
	var seq int64
	_, err = pgx.ForEachRow(rows, []any{&org, &seq}, func() error { st.orgHeads[org] = seq; return nil })
	if err != nil {
		return fmt.Errorf("sealer: organizations' last seals: %w", eventstore.Unavailable(err))
	}
	return nil
}

// checkpoint signs and stores a checkpoint of the tree as sealed.
func (s *Sealer) checkpoint(ctx context.Context, st *state) error {
	root, err := st.rng.GetRootHash(nil)
	if err != nil {
		return err
	}
	cp := audit.Checkpoint{Origin: s.o.Signer.Name(), Size: st.size, Root: root}
	signed, err := cp.Sign(s.o.Signer)
	if err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO checkpoints (tree_size, root_hash, note) VALUES ($1, $2, $3)
		ON CONFLICT (tree_size) DO NOTHING`, int64(st.size), root, string(signed)); err != nil {
		return fmt.Errorf("sealer: checkpoint of size %d: %w", st.size, eventstore.Unavailable(err))
	}
	st.checkpointSize, st.checkpointAt = st.size, s.o.Now()
	s.metrics.checkpoint.Set(float64(st.size))
	return nil
}

// leafOf is the leaf of a stored event at seq.
func leafOf(e eventstore.RawEvent, seq int64, orgPrev *int64) audit.Leaf {
	return audit.Leaf{
		Seq: seq, OrgPrevSeq: orgPrev, Position: e.Cursor.Position,
		ID: e.ID, Type: e.Type, OrgID: e.OrgID, KeyID: e.KeyID, StreamVersion: e.StreamVersion,
		OccurredAt: domain.FormatTime(e.OccurredAt), Actor: e.Actor, Data: e.Data,
	}
}

// hexHash writes one hash as JSON carries it.
func hexHash(h []byte) string { return hex.EncodeToString(h) }
