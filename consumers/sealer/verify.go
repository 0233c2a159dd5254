package sealer

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/eventstore"
)

// Problem is the first thing Verify found wrong with the ledger. Seq is the
// first bad seq, or -1 when the problem is not about one event (a
// checkpoint's signature).
type Problem struct {
	Seq    int64
	Reason string
}

func (p *Problem) Error() string {
	if p.Seq < 0 {
		return p.Reason
	}
	return fmt.Sprintf("first bad seq %d: %s", p.Seq, p.Reason)
}

// Report is what Verify checked.
type Report struct {
	Sealed      uint64 // sealed events, all checked
	Checkpoints int    // signed checkpoints, all checked
	Unsealed    int64  // committed events not sealed yet (the tail)
}

// verifyChunk is how many seals one query of Verify reads.
const verifyChunk = 20000

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

	chunks := make(chan verifyRows, 2)
	fetchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go fetchSeals(fetchCtx, pool, chunks)

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
					return rep, &Problem{Seq: int64(prevCheckpoint), Reason: fmt.Sprintf(
						"the first %d leaves do not have the root signed in the checkpoint of that size: the seals table was altered between seq %d and %d",
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
		return rep, &Problem{Seq: int64(rep.Sealed), Reason: fmt.Sprintf(
			"missing from the seals table, which ends there, but a checkpoint of size %d was signed", checkpoints[len(checkpoints)-1].Size)}
	}
	if rep.Sealed > 0 {
		if p, err := unsealedBehind(ctx, pool, last); err != nil || p != nil {
			if err != nil {
				return rep, err
			}
			return rep, p
		}
	}
	var total int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&total); err != nil {
		return rep, fmt.Errorf("count events: %w", eventstore.Unavailable(err))
	}
	rep.Unsealed = total - int64(rep.Sealed)
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

// verifyRow is one seal with the event now at its position, if any.
type verifyRow struct {
	seq        int64
	position   int64
	eventID    string
	orgID      string
	orgPrevSeq *int64
	leafHash   []byte
	found      bool
	event      eventstore.RawEvent
}

type verifyRows struct {
	rows []verifyRow
	err  error
}

// fetchSeals sends the seals in seq order, a chunk at a time, each with the
// event now at its position, so that reading the next chunk overlaps with
// checking this one.
func fetchSeals(ctx context.Context, pool *pgxpool.Pool, out chan<- verifyRows) {
	defer close(out)
	for from := int64(0); ; from += verifyChunk {
		rows, err := pool.Query(ctx, `SELECT s.seq, s.position, s.event_id::text, s.org_id, s.org_prev_seq, s.leaf_hash,
				e.position, e.transaction_id::text, e.id::text, e.org_id, e.key_id, e.stream_version, e.type, e.actor, e.occurred_at, e.data
			FROM seals s LEFT JOIN events e ON e.position = s.position
			WHERE s.seq >= $1 AND s.seq < $2 ORDER BY s.seq`, from, from+verifyChunk)
		if err != nil {
			out <- verifyRows{err: fmt.Errorf("read seals: %w", eventstore.Unavailable(err))}
			return
		}
		var chunk []verifyRow
		for rows.Next() {
			var r verifyRow
			var pos, version *int64
			var xid, id, org, key, typ, actor *string
			var at *time.Time
			if err := rows.Scan(&r.seq, &r.position, &r.eventID, &r.orgID, &r.orgPrevSeq, &r.leafHash,
				&pos, &xid, &id, &org, &key, &version, &typ, &actor, &at, &r.event.Data); err != nil {
				rows.Close()
				out <- verifyRows{err: fmt.Errorf("read seals: %w", err)}
				return
			}
			if pos != nil {
				x, err := eventstore.ParseXid(*xid)
				if err != nil {
					rows.Close()
					out <- verifyRows{err: err}
					return
				}
				r.found = true
				r.event = eventstore.RawEvent{Cursor: eventstore.Cursor{Xid: x, Position: *pos}, ID: *id, OrgID: *org, KeyID: *key,
					StreamVersion: *version, Type: *typ, Actor: *actor, OccurredAt: *at, Data: r.event.Data}
			}
			chunk = append(chunk, r)
		}
		if err := rows.Err(); err != nil {
			out <- verifyRows{err: fmt.Errorf("read seals: %w", eventstore.Unavailable(err))}
			return
		}
		if len(chunk) == 0 {
			return
		}
		select {
		case out <- verifyRows{rows: chunk}:
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
		return &Problem{Seq: seq, Reason: fmt.Sprintf("missing from the seals table (the next seal is seq %d)", r.seq)}
	}
	if !r.found {
		return &Problem{Seq: seq, Reason: fmt.Sprintf("its event (position %d, id %s) is missing from the events table", r.position, r.eventID)}
	}
	if r.event.ID != r.eventID || r.event.OrgID != r.orgID {
		return &Problem{Seq: seq, Reason: fmt.Sprintf("the event at position %d is %s of %q, but %s of %q was sealed there: rows were moved or swapped",
			r.position, r.event.ID, r.event.OrgID, r.eventID, r.orgID)}
	}
	c := r.event.Cursor
	if want > 0 && (c.Xid < last.Xid || c.Xid == last.Xid && c.Position <= last.Position) {
		return &Problem{Seq: seq, Reason: "its event comes before the previous seq's in ledger order: rows were reordered"}
	}
	prev, ok := heads[r.orgID]
	switch {
	case ok && (r.orgPrevSeq == nil || *r.orgPrevSeq != prev):
		return &Problem{Seq: seq, Reason: fmt.Sprintf("it names %s as its organization's previous event, but that is seq %d", orgPrev(r.orgPrevSeq), prev)}
	case !ok && r.orgPrevSeq != nil:
		return &Problem{Seq: seq, Reason: fmt.Sprintf("it names seq %d as its organization's previous event, but it is the organization's first", *r.orgPrevSeq)}
	}
	hash, err := leafOf(r.event, seq, r.orgPrevSeq).Hash()
	if err != nil {
		return &Problem{Seq: seq, Reason: fmt.Sprintf("its event cannot be encoded: %v", err)}
	}
	if !bytes.Equal(hash, r.leafHash) {
		return &Problem{Seq: seq, Reason: "its event's content differs from what was sealed (the leaf hash derived from the events table is not the sealed one)"}
	}
	return nil
}

func orgPrev(s *int64) string {
	if s == nil {
		return "no event"
	}
	return "seq " + strconv.FormatInt(*s, 10)
}

// unsealedBehind finds an unsealed event before the last sealed one in
// ledger order: one inserted behind the sealer's back. It names the first
// seq sealed after it.
func unsealedBehind(ctx context.Context, pool *pgxpool.Pool, last eventstore.Cursor) (*Problem, error) {
	xid := strconv.FormatUint(last.Xid, 10)
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
	return &Problem{Seq: seq, Reason: fmt.Sprintf("an event that was never sealed (position %d) sits before it in ledger order: it was inserted behind the sealer", pos)}, nil
}
