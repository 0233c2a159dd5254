package sealer

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
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
	// Verifier checks the checkpoints the sealer finds stored before it
	// extends them (see load). Default: derived from Signer, by signing
	// again and comparing, which holds for Ed25519 (the only algorithm of
	// signed notes), whose signatures are deterministic.
	Verifier note.Verifier
	// CheckpointFile, if set, is where the sealer keeps a copy of the last
	// checkpoint it signed, outside the database (serve sets
	// <data-dir>/audit-last-checkpoint): written after each checkpoint is
	// stored, and checked when a leadership term starts, so that deleting
	// the checkpoints from the database does not make the sealer sign a
	// forged tree.
	CheckpointFile string
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
	if o.Verifier == nil {
		o.Verifier = signerVerifier{o.Signer}
	}
	return &Sealer{store: store, pool: store.Pool(), o: o, metrics: newMetrics(o.Registry)}, nil
}

type metrics struct {
	lag        prometheus.Histogram
	sealed     prometheus.Counter
	treeSize   prometheus.Gauge
	checkpoint prometheus.Gauge
	leading    prometheus.Gauge
	refusing   prometheus.Gauge
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
		refusing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyledger_sealer_refusing",
			Help: "1 while this process refuses to seal because the audit log in the database does not extend the checkpoints signed before (see the log; run keyledger audit verify).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.lag, m.sealed, m.treeSize, m.checkpoint, m.leading, m.refusing)
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
		pending, _, err := s.store.Behind(ctx, st.cursor, 1)
		if err != nil {
			return st.size, err
		}
		if pending == 0 {
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
	// Each organization's last seal, in one pass over the seals: once per
	// leadership term, instead of a lookup per organization met.
	rows, err := s.pool.Query(ctx, `SELECT org_id, max(seq) FROM seals GROUP BY org_id`)
	if err != nil {
		return nil, fmt.Errorf("sealer: load: %w", eventstore.Unavailable(err))
	}
	var org string
	var head int64
	if _, err := pgx.ForEachRow(rows, []any{&org, &head}, func() error { st.orgHeads[org] = head; return nil }); err != nil {
		return nil, fmt.Errorf("sealer: load: %w", eventstore.Unavailable(err))
	}
	var size int64
	var signed string
	err = s.pool.QueryRow(ctx, `SELECT tree_size, note, created_at FROM checkpoints ORDER BY tree_size DESC LIMIT 1`).Scan(&size, &signed, &st.checkpointAt)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("sealer: load: %w", eventstore.Unavailable(err))
	}
	st.checkpointSize = uint64(size)
	if err := s.checkSigned(ctx, st, []byte(signed)); err != nil {
		var r *refusal
		if errors.As(err, &r) {
			s.metrics.refusing.Set(1)
			s.o.Logger.Error("sealer: refusing to seal: the audit log in the database does not extend what was signed; run keyledger audit verify", "err", err)
		}
		return nil, err
	}
	s.metrics.refusing.Set(0)
	s.metrics.treeSize.Set(float64(st.size))
	return st, nil
}

// refusal is the error of a sealer that will not sign the tree the database
// holds: it does not extend a checkpoint signed before.
type refusal struct{ reason string }

func (r *refusal) Error() string { return "sealer: refusing to seal: " + r.reason }

func refuse(format string, args ...any) error { return &refusal{reason: fmt.Sprintf(format, args...)} }

// checkSigned makes sure that the tree the database holds, which the sealer
// is about to extend and sign, extends every checkpoint signed before: the
// latest one stored (signed, the note of st.checkpointSize leaves, if any)
// and the last one this sealer signed, kept in Options.CheckpointFile. An
// attacker who rewrites events, seals and tree nodes consistently, and
// deletes the checkpoints that would show it, must not get the forged tree
// signed. It returns a *refusal when the tree does not extend them.
func (s *Sealer) checkSigned(ctx context.Context, st *state, signed []byte) error {
	root, err := st.rng.GetRootHash(nil)
	if err != nil {
		return err
	}
	fetch := nodeFetcher(ctx, s.pool)
	var stored *audit.Checkpoint
	if st.checkpointSize > 0 {
		cp, err := audit.OpenCheckpoint(signed, s.o.Verifier)
		if err != nil {
			return refuse("the latest checkpoint in the database (size %d) does not verify with the sealer's key: %v", st.checkpointSize, err)
		}
		if cp.Size != st.checkpointSize {
			return refuse("the latest checkpoint row (size %d) does not match its signed text (size %d)", st.checkpointSize, cp.Size)
		}
		if err := extends(fetch, st.size, root, cp); err != nil {
			return refuse("the tree in the database does not extend the latest checkpoint in the database: %v", err)
		}
		stored = &cp
	}
	if s.o.CheckpointFile == "" {
		return nil
	}
	text, err := os.ReadFile(s.o.CheckpointFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sealer: the last signed checkpoint: %w", err)
	}
	kept, err := audit.OpenCheckpoint(text, s.o.Verifier)
	if err != nil {
		return refuse("the last checkpoint this sealer signed, in %s, does not verify with its key (if the signing key was changed on purpose, move the file away): %v",
			s.o.CheckpointFile, err)
	}
	if stored == nil || stored.Size < kept.Size {
		var have uint64
		if stored != nil {
			have = stored.Size
		}
		return refuse("this sealer signed a checkpoint of size %d (%s), but the database's checkpoints end at size %d: checkpoints were deleted, "+
			"or the database was restored from an older backup (if so on purpose, move the file away)", kept.Size, s.o.CheckpointFile, have)
	}
	if err := extends(fetch, st.size, root, kept); err != nil {
		return refuse("the tree in the database does not extend the last checkpoint this sealer signed (%s): %v", s.o.CheckpointFile, err)
	}
	return nil
}

// extends checks that the tree of size leaves and root, whose nodes fetch
// reads, extends the signed checkpoint cp: it has cp's root at cp's size,
// and its root is consistent with cp's (a consistency proof from its own
// nodes verifies against both roots).
func extends(fetch audit.NodeFetcher, size uint64, root []byte, cp audit.Checkpoint) error {
	if size < cp.Size {
		return fmt.Errorf("the seals table has %d leaves, fewer than the %d signed", size, cp.Size)
	}
	at, err := audit.RootAt(cp.Size, fetch)
	if err != nil {
		return err
	}
	if !bytes.Equal(at, cp.Root) {
		return fmt.Errorf("its first %d leaves do not have the signed root of that size", cp.Size)
	}
	var proof [][]byte
	if size > cp.Size {
		if proof, err = audit.ConsistencyProof(cp.Size, size, fetch); err != nil {
			return err
		}
	}
	if err := audit.VerifyConsistency(cp.Size, size, proof, cp.Root, root); err != nil {
		return fmt.Errorf("its root at size %d is not consistent with the signed root of size %d: %v", size, cp.Size, err)
	}
	return nil
}

// signerVerifier verifies signatures by making them again: right for
// deterministic signatures (Ed25519), and needs no public key.
type signerVerifier struct{ s note.Signer }

func (v signerVerifier) Name() string    { return v.s.Name() }
func (v signerVerifier) KeyHash() uint32 { return v.s.KeyHash() }
func (v signerVerifier) Verify(msg, sig []byte) bool {
	own, err := v.s.Sign(msg)
	return err == nil && subtle.ConstantTimeCompare(own, sig) == 1
}

// keepCheckpoint writes the signed checkpoint to Options.CheckpointFile,
// atomically: a temporary file in the same directory, synced, then renamed
// over the old one.
func (s *Sealer) keepCheckpoint(signed []byte) (err error) {
	path := s.o.CheckpointFile
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(signed); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// sealAll seals batches until none is full. Reading and hashing the next
// batch overlaps with writing the last one: one goroutine advances the state
// batch by batch, the other commits the batches in order. On error the state
// is stale (it may be ahead of what was committed): the caller must load it
// again.
func (s *Sealer) sealAll(ctx context.Context, st *state) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan *batch, 1)
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		for {
			b, err := s.nextBatch(ctx, st)
			if err != nil || b == nil {
				readErr <- err
				return
			}
			select {
			case batches <- b:
			case <-ctx.Done():
				readErr <- ctx.Err()
				return
			}
			if b.n < s.o.Batch {
				readErr <- nil
				return
			}
		}
	}()
	for b := range batches {
		if err := s.write(ctx, b); err != nil {
			cancel()
			for range batches {
			}
			<-readErr
			return err
		}
	}
	return <-readErr
}

// batch is a sealed batch ready to be written.
type batch struct {
	n        int
	first    uint64
	seals    [][]any
	nodes    [][]any
	occurred []time.Time
}

// nextBatch reads the next committed events after the state's cursor,
// assigns their seqs, hashes them into the tree and advances the state. It
// returns nil when there is nothing to seal.
func (s *Sealer) nextBatch(ctx context.Context, st *state) (*batch, error) {
	events, cursor, err := s.store.TailRaw(ctx, st.cursor, s.o.Batch)
	if err != nil || len(events) == 0 {
		return nil, err
	}
	b := &batch{n: len(events), first: st.size, seals: make([][]any, len(events)), occurred: make([]time.Time, len(events))}
	visit := func(id compact.NodeID, hash []byte) {
		if id.Level >= storedLevel {
			b.nodes = append(b.nodes, []any{int16(id.Level), int64(id.Index), hash})
		}
	}
	for i, e := range events {
		seq := int64(st.size) + int64(i)
		leaf := leafOf(e, seq, nil)
		if prev, ok := st.orgHeads[e.OrgID]; ok {
			leaf.OrgPrevSeq = &prev
		}
		hash, err := leaf.Hash()
		if err != nil {
			return nil, fmt.Errorf("sealer: event %s: %w", e.ID, err)
		}
		if err := st.rng.Append(hash, visit); err != nil {
			return nil, err
		}
		st.orgHeads[e.OrgID] = seq
		b.seals[i] = []any{seq, e.Cursor.Position, e.ID, e.OrgID, leaf.OrgPrevSeq, hash}
		b.occurred[i] = e.OccurredAt
	}
	st.size += uint64(len(events))
	st.cursor = cursor
	return b, nil
}

// write commits one batch's seals and tree nodes in one transaction.
func (s *Sealer) write(ctx context.Context, b *batch) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"seals"},
			[]string{"seq", "position", "event_id", "org_id", "org_prev_seq", "leaf_hash"}, pgx.CopyFromRows(b.seals)); err != nil {
			return err
		}
		if len(b.nodes) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"merkle_nodes"}, []string{"level", "idx", "hash"}, pgx.CopyFromRows(b.nodes)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sealer: seal seq %d to %d: %w", b.first, b.first+uint64(b.n)-1, eventstore.Unavailable(err))
	}
	now := s.o.Now()
	for _, at := range b.occurred {
		lag := now.Sub(at)
		s.metrics.lag.Observe(lag.Seconds())
		if s.o.ObserveLag != nil {
			s.o.ObserveLag(lag)
		}
	}
	s.metrics.sealed.Add(float64(b.n))
	s.metrics.treeSize.Set(float64(b.first) + float64(b.n))
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
	if s.o.CheckpointFile != "" {
		if err := s.keepCheckpoint(signed); err != nil {
			return fmt.Errorf("sealer: keep the checkpoint of size %d in %s: %w", st.size, s.o.CheckpointFile, err)
		}
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
