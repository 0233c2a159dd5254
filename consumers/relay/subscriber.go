package relay

import (
	"context"
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// behindLimit caps the count of events a lag check makes.
const behindLimit = 100_000

// checkpointEvery is how often, at most, the relay saves its checkpoint.
const checkpointEvery = 200 * time.Millisecond

// horizonRetry is how soon the relay reads again when committed events are
// held above the xid8 horizon; it doubles while the horizon stays held, up
// to the poll interval. A revocation held there waits that long to be
// published, so it starts small: the transactions that hold the horizon are
// usually other appends, a millisecond or two long.
const horizonRetry = time.Millisecond

// busyRead and readEvery: after a read that found busyRead events or more,
// the ledger is taking a stream of commits (groups of appends), and the
// relay reads again readEvery after that read began (at once if publishing
// took longer) rather than when a commit wakes it, so that the commits of
// that time go out from one read; a poll or a heartbeat meanwhile still
// starts a read. After a read that found fewer, a commit wakes it at once:
// an isolated command (a revocation) is published as soon as it commits.
//
// Reading as each commit woke it, the relay read about once per commit
// under the generate benchmark (some 570 times a second at 32 clients,
// about 15 keys a commit), each read a query, a decode and a settle. In
// five alternating pairs, this took Postgres' CPU per key from 52 µs to 50
// (means), the bench process's (service and load generator) from 126 µs to
// 122, and keys/s up 2%. A notice then leaves up to readEvery later under
// such a load, well inside the propagation bound. Waiting after every read
// that found events, rather than after busy ones, tripled the propagation
// p99 (1.0 to 3.3 ms): its revocations come one at a time, each read
// finding one.
const (
	busyRead  = 8
	readEvery = 3 * time.Millisecond
)

// ledgerSubscriber is a watermill Subscriber over the ledger, from a
// cursor, in ledger order. It hands the router one message at a time, the
// next once the handler has sent that one through the pipeline; at the end of
// each batch it settles the pipeline, and sends again, from the first event
// not stored, until the whole batch is: an event is never skipped, and the
// stream keeps ledger order. It checkpoints every checkpointEvery at most,
// and between batches measures the lag and sends the heartbeat; also while a
// batch waits for JetStream (NATS is down), so that the lag gauges show the
// outage.
type ledgerSubscriber struct {
	relay     *Relay
	js        jetstream.JetStream
	pipe      *pipeline
	from      eventstore.Cursor
	cursor    eventstore.Cursor // where the batch being published starts
	lastCheck time.Time
	held      int // reads in a row that the xid8 horizon kept from events
}

func (s *ledgerSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	go s.run(ctx, out)
	return out, nil
}

func (s *ledgerSubscriber) Close() error { return nil }

func (s *ledgerSubscriber) run(ctx context.Context, out chan<- *message.Message) {
	defer close(out)
	r := s.relay
	wake := r.store.Wakeups(ctx, r.log)
	poll := time.NewTicker(r.cfg.Poll)
	defer poll.Stop()
	beat := time.NewTicker(r.cfg.Heartbeat)
	defer beat.Stop()
	cursor := s.from
	saved, lastSave := cursor, time.Time{}
	save := func(ctx context.Context) {
		if saved == cursor {
			return
		}
		if err := r.saveCheckpoint(ctx, cursor); err != nil {
			if ctx.Err() == nil {
				r.log.Warn("relay: checkpoint not saved; it will be with a later batch", "err", err)
			}
			return
		}
		saved, lastSave = cursor, time.Now()
	}
	defer func() { // where the relay stopped, for its successor
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		save(sctx)
	}()
	for ctx.Err() == nil {
		select { // this read sees the commits a pending wake-up announces
		case <-wake:
		default:
		}
		start := time.Now()
		events, next, err := r.store.Tail(ctx, cursor, r.cfg.Batch)
		if err != nil {
			r.log.Warn("relay: cannot read the ledger", "err", err)
			sleep(ctx, r.cfg.Poll)
			continue
		}
		s.cursor = cursor
		if !s.publish(ctx, out, events, beat.C) {
			return
		}
		if len(events) > 0 {
			cursor = next
			r.metrics.published.Add(float64(len(events)))
			r.metrics.position.Set(float64(cursor.Position))
		}
		// The checkpoint is saved every checkpointEvery at most, under a
		// steady stream of commits as when caught up (then at the first
		// pass of this loop checkpointEvery after the last save: the next
		// poll or heartbeat, a second, at the latest): a relay that stops
		// without saving publishes those events again, and JetStream drops
		// them as duplicates of their Nats-Msg-Id. Saving each time the
		// relay caught up cost a committed write (a WAL flush) some 40
		// times a second under load.
		if time.Since(lastSave) >= checkpointEvery {
			save(ctx)
		}
		if time.Since(s.lastCheck) >= r.cfg.Heartbeat {
			s.checkLag(ctx, cursor)
		}
		if len(events) == r.cfg.Batch {
			continue
		}
		// Committed events that Tail could not return yet lie above the xid8
		// horizon, which a transaction still open anywhere on the server
		// holds back; nothing may wake the relay when that one ends, so look
		// again soon rather than at the next poll, backing off while the
		// horizon stays held. After a read that found events, look again
		// soon without asking: under load some usually are there; after one
		// that found busyRead or more, only then (see readEvery).
		var held <-chan time.Time
		woken := wake
		if len(events) > 0 {
			s.held = 0
			again := horizonRetry
			if len(events) >= busyRead {
				again, woken = readEvery-time.Since(start), nil
			}
			held = time.After(again)
		} else if n, _, err := r.store.Behind(ctx, cursor, 1); err != nil || n == 0 {
			s.held = 0
		} else {
			held = time.After(min(horizonRetry<<min(s.held, 10), r.cfg.Poll))
			s.held++
		}
		select {
		case <-ctx.Done():
		case <-woken:
		case <-poll.C:
		case <-held:
		case <-beat.C: // the heartbeat must not wait for the poll
		}
	}
}

// publish hands events to the router, one at a time, and settles the
// pipeline, until JetStream has stored them all; beat is the heartbeat
// ticker's channel. It returns false if ctx ends first.
func (s *ledgerSubscriber) publish(ctx context.Context, out chan<- *message.Message, events []domain.Event, beat <-chan time.Time) bool {
	r := s.relay
	for attempt := 0; len(events) > 0; {
		sent, ok := s.send(ctx, out, events, beat)
		if !ok {
			return false
		}
		stored, err := s.pipe.Settle(ctx, beat, func() { s.checkLagNow(ctx) })
		if ctx.Err() != nil {
			return false
		}
		if stored > 0 {
			events, attempt = events[stored:], 0
		}
		if len(events) == 0 {
			return true
		}
		if stored < sent && outOfTurn(err) {
			continue // another publisher stored a message between two of ours
		}
		if stored < sent {
			r.metrics.publishErrors.Inc() // the handler counts those it could not send
		} else {
			err = errNotSent
		}
		r.log.Warn("relay: publication failed; trying again", "id", events[0].ID, "position", events[0].Position,
			"attempt", attempt+1, "err", err)
		if !sleep(ctx, backoff(attempt)) {
			return false
		}
		attempt++
		// The stream may have been deleted (a lost NATS server, an
		// operator): make it again before the next attempt. Followers of
		// the old one see the new one's creation time in the heartbeat
		// and start over.
		if err := r.ensureStream(ctx, s.js, s.pipe); err != nil {
			return false
		}
	}
	return true
}

// errNotSent is why an event was not published when the handler could not
// send it: its own error is in the handler's log and metrics.
var errNotSent = errors.New("the relay's handler could not send it (NATS unreachable?)")

// send hands events to the router one at a time, each once the handler has
// sent the one before, and stops at the first that the handler could not
// send (its retries spent). It reports how many it sent, and false if ctx
// ended first. While it waits (on a replicated stream the handler waits
// for each acknowledgement), it measures the lag at each beat.
func (s *ledgerSubscriber) send(ctx context.Context, out chan<- *message.Message, events []domain.Event, beat <-chan time.Time) (int, bool) {
	for i, e := range events {
		msg, err := newMessage(e)
		if err != nil { // cannot happen for an event the store decoded
			s.relay.log.Error("relay: cannot encode an event", "id", e.ID, "err", err)
			return i, false
		}
		msg.SetContext(ctx)
		select {
		case out <- msg:
		case <-ctx.Done():
			return i, false
		}
	wait:
		for {
			select { // an answer already there comes before a beat, as in Settle
			case <-msg.Acked():
				break wait
			case <-msg.Nacked():
				return i, true
			default:
			}
			select {
			case <-msg.Acked():
				break wait
			case <-msg.Nacked():
				return i, true
			case <-ctx.Done():
				return i, false
			case <-beat:
				s.checkLagNow(ctx)
			}
		}
	}
	return len(events), true
}

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 5)
	return min(d, 3*time.Second)
}

// checkLagNow is checkLag from the start of the batch being published, at
// most once per Heartbeat: the events of the batch count as not published
// (a slight overstatement).
func (s *ledgerSubscriber) checkLagNow(ctx context.Context) {
	if time.Since(s.lastCheck) >= s.relay.cfg.Heartbeat {
		s.checkLag(ctx, s.cursor)
	}
}

// checkLag measures how far the stream is behind the ledger and, as the
// relay's heartbeat, tells followers what the stream holds.
func (s *ledgerSubscriber) checkLag(ctx context.Context, cursor eventstore.Cursor) {
	r := s.relay
	s.lastCheck = time.Now()
	measured := s.lastCheck
	n, oldest, err := r.store.Behind(ctx, cursor, behindLimit)
	if err != nil {
		r.log.Warn("relay: cannot measure the lag", "err", err)
		return
	}
	var lag time.Duration
	if n > 0 {
		lag = max(time.Since(oldest), 0)
		measured = oldest
	}
	r.metrics.lagEvents.Set(float64(n))
	r.metrics.lagSeconds.Set(lag.Seconds())
	// The heartbeat vouches only for what had committed when Behind looked,
	// so its lag runs from then (or from the oldest event not yet
	// published) to the moment it is sent, not to the measurement.
	if err := r.heartbeat(ctx, s.js, s.pipe, measured); err != nil && !errors.Is(err, context.Canceled) {
		r.log.Warn("relay: heartbeat not sent", "err", err)
	}
}
