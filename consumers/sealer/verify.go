package sealer

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/eventstore"
)

// Problem is the first thing Verify found wrong with the ledger. Seq is the
// first bad seq, or -1 when the problem is not about one event (a
// checkpoint's signature).
//
// Some problems cannot be pinned to one seq: when an event and its leaf hash
// were rewritten consistently, only the signed root of the checkpoint after
// them disagrees, so the bad seq is somewhere in the range that checkpoint
// added. Last is then the range's last seq, and Seq its first: the first seq
// that the checkpoints can no longer vouch for (every seq before it still
// verifies). For a problem of one seq, Last is Seq.
type Problem struct {
	Seq    int64
	Last   int64
	Reason string
}

func (p *Problem) Error() string {
	switch {
	case p.Seq < 0:
		return p.Reason
	case p.Last > p.Seq:
		return fmt.Sprintf("first bad seq %d (the first that the checkpoints cannot vouch for): %s", p.Seq, p.Reason)
	}
	return fmt.Sprintf("first bad seq %d: %s", p.Seq, p.Reason)
}

// badSeq is a Problem of one seq.
func badSeq(seq int64, reason string) *Problem { return &Problem{Seq: seq, Last: seq, Reason: reason} }

// Report is what Verify checked.
type Report struct {
	Sealed      uint64 // sealed events, all checked
	Checkpoints int    // signed checkpoints, all checked
	// Unsealed is how many committed events were not sealed yet (the tail),
	// counted in one snapshot when the check ended: seals committed while
	// it ran count as sealed there, though Sealed does not include them.
	Unsealed int64
}

// verifyChunk is how many seals one query of Verify reads (a variable for
// the tests).
var verifyChunk atomic.Int64

func init() { verifyChunk.Store(20000) }

// Verify checks the whole ledger against its signed checkpoints and the event
// table: every checkpoint's signature; that seqs are gapless; that each
// sealed event is still in the event table, unchanged (its leaf hash is
// derived again from the row), in ledger order, and chained to its
// organization's previous sealed event; that the tree of the first n leaves
// has the signed root of each checkpoint of size n; and that no unsealed
// event sits before a sealed one in ledger order. It stops at the first
// problem, which it returns as a *Problem naming the first bad seq; any other
// error means the check could not run. progress, if not nil, is told the
// number of events checked after each chunk.
func Verify(ctx context.Context, pool *pgxpool.Pool, verifier note.Verifier, progress func(checked uint64)) (Report, error) {
	var rep Report
	checkpoints, err := loadCheckpoints(ctx, pool, verifier)
	if err != nil {
		return rep, err
	}
	rep.Checkpoints = len(checkpoints)

	fetched := make(chan verifyRows, 1)
	chunks := make(chan verifyRows, 1)
	fetchCtx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		for range chunks { // let the reader and the hasher end
		}
	}()
	go fetchSeals(fetchCtx, pool, fetched)
	go hashChunks(fetchCtx, fetched, chunks)

	rng := audit.NewRange()
	heads := map[string]int64{}
	var last eventstore.Cursor
	next := 0 // index in checkpoints of the next one to reach
	var prevCheckpoint uint64
	for chunk := range chunks {
		if chunk.err != nil {
			return rep, chunk.err
		}
		for _, r := range chunk.rows {
			if p := checkRow(r, rep.Sealed, heads, last); p != nil {
				return rep, p
			}
			heads[r.orgID] = r.seq
			last = r.event.Cursor
			if err := rng.Append(r.leafHash, nil); err != nil {
				return rep, err
			}
			rep.Sealed++
			if next < len(checkpoints) && checkpoints[next].Size == rep.Sealed {
				root, err := rng.GetRootHash(nil)
				if err != nil {
					return rep, err
				}
				if !bytes.Equal(root, checkpoints[next].Root) {
					// Every leaf was derived again from its event and matched,
					// and the previous checkpoint's root matched: an event and
					// its leaf hash were rewritten together, somewhere in the
					// leaves this checkpoint added.
					return rep, &Problem{Seq: int64(prevCheckpoint), Last: int64(rep.Sealed) - 1, Reason: fmt.Sprintf(
						"the first %d leaves do not have the root signed in the checkpoint of that size, though each seal matches its event: an event and its leaf hash were rewritten together, somewhere within seq %d..%d",
						rep.Sealed, prevCheckpoint, rep.Sealed-1)}
				}
				prevCheckpoint = rep.Sealed
				next++
			}
		}
		if progress != nil {
			progress(rep.Sealed)
		}
	}
	if next < len(checkpoints) {
		return rep, badSeq(int64(rep.Sealed), fmt.Sprintf(
			"missing from the seals table, which ends there, but a checkpoint of size %d was signed", checkpoints[len(checkpoints)-1].Size))
	}
	if rep.Sealed > 0 {
		if p, err := unsealedBehind(ctx, pool, last, rep.Sealed); err != nil || p != nil {
			if err != nil {
				return rep, err
			}
			return rep, p
		}
	}
	// One statement, one snapshot: the sealer may have sealed more since
	// the last chunk was read.
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events) - (SELECT count(*) FROM seals)`).Scan(&rep.Unsealed); err != nil {
		return rep, fmt.Errorf("count events: %w", eventstore.Unavailable(err))
	}
	return rep, nil
}

// loadCheckpoints reads every checkpoint, in size order, and checks its
// signature and that its columns agree with its signed text.
func loadCheckpoints(ctx context.Context, pool *pgxpool.Pool, verifier note.Verifier) ([]audit.Checkpoint, error) {
	rows, err := pool.Query(ctx, `SELECT tree_size, root_hash, note FROM checkpoints ORDER BY tree_size`)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", eventstore.Unavailable(err))
	}
	var out []audit.Checkpoint
	var size int64
	var root []byte
	var signed string
	var problem *Problem
	_, err = pgx.ForEachRow(rows, []any{&size, &root, &signed}, func() error {
		if problem != nil {
			return nil
		}
		cp, err := audit.OpenCheckpoint([]byte(signed), verifier)
		if err != nil {
			problem = &Problem{Seq: -1, Reason: fmt.Sprintf("the checkpoint of size %d does not verify: %v", size, err)}
			return nil
		}
		if cp.Size != uint64(size) || !bytes.Equal(cp.Root, root) {
			problem = &Problem{Seq: -1, Reason: fmt.Sprintf("the checkpoint row of size %d does not match its signed text", size)}
			return nil
		}
		out = append(out, cp)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", eventstore.Unavailable(err))
	}
	if problem != nil {
		return nil, problem
	}
	return out, nil
}

// verifyRow is one seal with the event now at its position, if any, and the
// leaf hash derived from that event.
type verifyRow struct {
	seq        int64
	position   int64
	eventID    string
	orgID      string
	orgPrevSeq *int64
	leafHash   []byte
	found      bool
	event      eventstore.RawEvent
	derived    []byte
	hashErr    error
}

type verifyRows struct {
	rows []verifyRow
	err  error
}

// fetchSeals sends the seals in seq order, a chunk at a time, each with the
// event now at its position. Chunks are pages of the seals that exist (keyset
// paging), not ranges of seqs, so that a hole in the seqs, however long,
// reaches the checker as a missing seq instead of ending the read. A chunk's
// events are read by one range scan of their positions (ledger order is
// nearly position order), not by a lookup per seal. Reading runs ahead of
// hashing, which runs ahead of checking: the three overlap.
func fetchSeals(ctx context.Context, pool *pgxpool.Pool, out chan<- verifyRows) {
	defer close(out)
	limit := int(verifyChunk.Load())
	for from := int64(0); ; {
		chunk, err := readChunk(ctx, pool, from, limit)
		if len(chunk) == 0 && err == nil {
			return
		}
		select {
		case out <- verifyRows{rows: chunk, err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil || len(chunk) < limit {
			return
		}
		from = chunk[len(chunk)-1].seq + 1
	}
}

// readChunk reads the next limit seals from seq from on and the events at
// their positions.
func readChunk(ctx context.Context, pool *pgxpool.Pool, from int64, limit int) ([]verifyRow, error) {
	rows, err := pool.Query(ctx, `SELECT seq, position, event_id::text, org_id, org_prev_seq, leaf_hash
		FROM seals WHERE seq >= $1 ORDER BY seq LIMIT $2`, from, limit)
	if err != nil {
		return nil, fmt.Errorf("read seals: %w", eventstore.Unavailable(err))
	}
	var chunk []verifyRow
	var r verifyRow
	if _, err := pgx.ForEachRow(rows, []any{&r.seq, &r.position, &r.eventID, &r.orgID, &r.orgPrevSeq, &r.leafHash}, func() error {
		chunk = append(chunk, r)
		r.orgPrevSeq, r.leafHash = nil, nil
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read seals: %w", eventstore.Unavailable(err))
	}
	if len(chunk) == 0 {
		return nil, nil
	}
	lo, hi := chunk[0].position, chunk[0].position
	positions := make([]int64, len(chunk))
	for i, c := range chunk {
		lo, hi = min(lo, c.position), max(hi, c.position)
		positions[i] = c.position
	}
	// A range scan, unless the chunk's positions are spread so far apart
	// that the range would read many events of other chunks.
	query, args := `SELECT `+eventstore.RawEventColumns+` FROM events e WHERE e.position BETWEEN $1 AND $2`, []any{lo, hi}
	if hi-lo > 4*int64(len(chunk)) {
		query, args = `SELECT `+eventstore.RawEventColumns+` FROM events e WHERE e.position = ANY($1)`, []any{positions}
	}
	erows, err := pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", eventstore.Unavailable(err))
	}
	events, err := eventstore.ScanRawEvents(erows)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", eventstore.Unavailable(err))
	}
	at := make(map[int64]int, len(events))
	for i, e := range events {
		at[e.Cursor.Position] = i
	}
	for i := range chunk {
		if j, ok := at[chunk[i].position]; ok {
			chunk[i].found, chunk[i].event = true, events[j]
		}
	}
	return chunk, nil
}

// hashChunks derives each row's leaf hash from its event.
func hashChunks(ctx context.Context, in <-chan verifyRows, out chan<- verifyRows) {
	defer close(out)
	for c := range in {
		for i := range c.rows {
			r := &c.rows[i]
			if r.found {
				r.derived, r.hashErr = leafOf(r.event, r.seq, r.orgPrevSeq).Hash()
			}
		}
		select {
		case out <- c:
		case <-ctx.Done():
			return
		}
	}
}

// checkRow checks one seal, expected at seq want, against its event, the
// organization's chain and ledger order.
func checkRow(r verifyRow, want uint64, heads map[string]int64, last eventstore.Cursor) *Problem {
	seq := int64(want)
	if r.seq != seq {
		return badSeq(seq, fmt.Sprintf("missing from the seals table (the next seal is seq %d)", r.seq))
	}
	if !r.found {
		return badSeq(seq, fmt.Sprintf("its event (position %d, id %s) is missing from the events table", r.position, r.eventID))
	}
	if r.event.ID != r.eventID || r.event.OrgID != r.orgID {
		return badSeq(seq, fmt.Sprintf("the event at position %d is %s of %q, but %s of %q was sealed there: rows were moved or swapped",
			r.position, r.event.ID, r.event.OrgID, r.eventID, r.orgID))
	}
	c := r.event.Cursor
	if want > 0 && (c.Xid < last.Xid || c.Xid == last.Xid && c.Position <= last.Position) {
		return badSeq(seq, "its event comes before the previous seq's in ledger order: rows were reordered")
	}
	prev, ok := heads[r.orgID]
	switch {
	case ok && (r.orgPrevSeq == nil || *r.orgPrevSeq != prev):
		return badSeq(seq, fmt.Sprintf("it names %s as its organization's previous event, but that is seq %d", orgPrev(r.orgPrevSeq), prev))
	case !ok && r.orgPrevSeq != nil:
		return badSeq(seq, fmt.Sprintf("it names seq %d as its organization's previous event, but it is the organization's first", *r.orgPrevSeq))
	}
	if r.hashErr != nil {
		return badSeq(seq, fmt.Sprintf("its event cannot be encoded: %v", r.hashErr))
	}
	if !bytes.Equal(r.derived, r.leafHash) {
		return badSeq(seq, "its event's content differs from what was sealed (the leaf hash derived from the events table is not the sealed one)")
	}
	return nil
}

func orgPrev(s *int64) string {
	if s == nil {
		return "no event"
	}
	return "seq " + strconv.FormatInt(*s, 10)
}

// unsealedBehind finds an unsealed event before the last verified one (seq
// verified-1, whose event is at last) in ledger order: one inserted behind
// the sealer's back. It names the first seq sealed after it.
func unsealedBehind(ctx context.Context, pool *pgxpool.Pool, last eventstore.Cursor, verified uint64) (*Problem, error) {
	xid := strconv.FormatUint(last.Xid, 10)
	// The verified seals' events are the events at or before last in ledger
	// order, each at a position of its own: if no more events than verified
	// seals are there, none was slipped in, and the costlier search below is
	// not needed. Only the verified seals count: a running sealer may have
	// sealed more since the last chunk was read (after last in ledger
	// order), and counting those would hide as many slipped-in events.
	var behind, sealed int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM events WHERE (transaction_id, position) <= ($1::text::xid8, $2)),
		(SELECT count(*) FROM seals WHERE seq < $3)`, xid, last.Position, int64(verified)).Scan(&behind, &sealed); err != nil {
		return nil, fmt.Errorf("unsealed events: %w", eventstore.Unavailable(err))
	}
	if behind <= sealed {
		return nil, nil
	}
	var pos int64
	var at string
	err := pool.QueryRow(ctx, `SELECT e.position, e.transaction_id::text FROM events e
		WHERE (e.transaction_id, e.position) < ($1::text::xid8, $2)
		  AND NOT EXISTS (SELECT 1 FROM seals s WHERE s.position = e.position)
		ORDER BY e.transaction_id, e.position LIMIT 1`, xid, last.Position).Scan(&pos, &at)
	if err == pgx.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("unsealed events: %w", eventstore.Unavailable(err))
	}
	var seq int64
	err = pool.QueryRow(ctx, `SELECT coalesce(min(s.seq), -1) FROM seals s JOIN events e ON e.position = s.position
		WHERE (e.transaction_id, e.position) > ($1::text::xid8, $2)`, at, pos).Scan(&seq)
	if err != nil {
		return nil, fmt.Errorf("unsealed events: %w", eventstore.Unavailable(err))
	}
	return badSeq(seq, fmt.Sprintf("an event that was never sealed (position %d) sits before it in ledger order: it was inserted behind the sealer", pos)), nil
}
