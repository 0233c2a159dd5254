package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// Progress is told, about once a second and at the end, how many events a
// long run has handled and the ledger position it has reached.
type Progress func(done int, position int64)

// Republish publishes the ledger again, in ledger order, from the event at
// position from (or the first one after it) to the last event committed when
// it started, through the same publisher as the relay: it refills a stream
// that was lost or purged, since NATS is never the only copy.
//
// Its messages carry Nats-Msg-Id "<event id>.republished.<run>", not the
// event id: a purge does not clear JetStream's duplicate window, so within
// it the event ids would be dropped as duplicates of the purged messages.
// An event still in the stream is therefore there twice after a republish;
// followers drop the second by the key's stream version. It does not move
// the relay's checkpoint, and it can run while a relay is active. It returns
// how many events it published.
func (r *Relay) Republish(ctx context.Context, from int64, progress Progress) (int, error) {
	if progress == nil {
		progress = func(int, int64) {}
	}
	js, err := jsOf(r)
	if err != nil {
		return 0, err
	}
	defer js.CleanupPublisher()
	pipe := newPipeline(js, r.cfg.Notices.Stream)
	if err := r.ensureStream(ctx, js, pipe); err != nil {
		return 0, err
	}
	cursor, err := r.cursorBefore(ctx, from)
	if err != nil {
		return 0, err
	}
	var head int64
	if err := r.pool.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM events`).Scan(&head); err != nil {
		return 0, fmt.Errorf("republish: %w", eventstore.Unavailable(err))
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	done, last := 0, time.Now()
	for {
		events, next, err := r.store.Tail(ctx, cursor, r.cfg.Batch)
		if err != nil {
			return done, fmt.Errorf("republish: %w", err)
		}
		var old []domain.Event
		for _, e := range events {
			if e.Position <= head { // the relay publishes those committed after the start
				old = append(old, e)
			}
		}
		if err := r.republish(ctx, pipe, old, run); err != nil {
			return done, err
		}
		done += len(old)
		cursor = next
		if time.Since(last) >= time.Second && len(old) > 0 {
			last = time.Now()
			progress(done, old[len(old)-1].Position)
		}
		if len(events) == r.cfg.Batch && len(old) > 0 {
			continue
		}
		// A short batch ends the run only when nothing committed up to head
		// is left after the cursor: Tail stops at the xid8 horizon, which any
		// transaction on the server can hold back for a while.
		left, err := r.leftUpTo(ctx, cursor, head)
		if err != nil {
			return done, err
		}
		if !left {
			progress(done, cursor.Position)
			return done, nil
		}
		if !sleep(ctx, 20*time.Millisecond) {
			return done, ctx.Err()
		}
	}
}

// republish publishes events through pipe under their republished ids, and
// waits until JetStream has stored them all. A message refused for following
// one of the relay's is sent again at once; any other failure ends the run.
func (r *Relay) republish(ctx context.Context, pipe *pipeline, events []domain.Event, run string) error {
	for len(events) > 0 {
		var err error
		for _, e := range events {
			msg, merr := newMessage(e)
			if merr != nil {
				return merr
			}
			msg.UUID = e.ID + ".republished." + run
			if err = pipe.Publish(r.cfg.Notices.Subject(e.OrgID, e.Type), msg); err != nil {
				break
			}
		}
		stored, serr := pipe.Settle(ctx, nil, nil)
		events = events[stored:]
		if err == nil && outOfTurn(serr) {
			continue
		}
		if err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("republish event at position %d: %w", events[0].Position, err)
		}
	}
	return nil
}

// leftUpTo reports whether a committed event at or below position head lies
// after the cursor in ledger order.
func (r *Relay) leftUpTo(ctx context.Context, after eventstore.Cursor, head int64) (bool, error) {
	var left bool
	err := r.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events
		WHERE (transaction_id, position) > ($1::text::xid8, $2) AND position <= $3)`,
		strconv.FormatUint(after.Xid, 10), after.Position, head).Scan(&left)
	if err != nil {
		return false, fmt.Errorf("republish: %w", eventstore.Unavailable(err))
	}
	return left, nil
}

// cursorBefore is the cursor just before the first event, in ledger order,
// of those at position from or after it; the start of the ledger for
// from <= 1. Ledger order is not position order (a transaction can take its
// id before another takes a lower position), so starting at the event with
// the lowest such position could leave out one of them; starting at the
// first in ledger order may publish a few events before from again, which
// followers drop.
func (r *Relay) cursorBefore(ctx context.Context, from int64) (eventstore.Cursor, error) {
	if from <= 1 {
		return eventstore.Cursor{}, nil
	}
	var xid string
	var pos int64
	err := r.pool.QueryRow(ctx, `SELECT transaction_id::text, position FROM events
		WHERE position >= $1 ORDER BY events.transaction_id, events.position LIMIT 1`, from).Scan(&xid, &pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return eventstore.Cursor{}, fmt.Errorf("republish: no event at position %d or after it", from)
	}
	if err != nil {
		return eventstore.Cursor{}, fmt.Errorf("republish: %w", eventstore.Unavailable(err))
	}
	x, err := eventstore.ParseXid(xid)
	if err != nil {
		return eventstore.Cursor{}, err
	}
	return eventstore.Cursor{Xid: x, Position: pos - 1}, nil
}
