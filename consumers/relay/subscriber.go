package relay

import (
	"context"
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

var pgxNoRows = pgx.ErrNoRows

// behindLimit caps the count of events a lag check makes.
const behindLimit = 100_000

// ledgerSubscriber is a watermill Subscriber over the ledger, from a
// cursor, in ledger order. It hands the router one message at a time and
// sends the next only when that one is acknowledged, so publications keep
// ledger order; a nacked message is sent again, never skipped. It
// checkpoints after each batch, and between batches measures the lag and
// sends the heartbeat.
type ledgerSubscriber struct {
	relay *Relay
	js    jetstream.JetStream
	from  eventstore.Cursor
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
	cursor := s.from
	var lastCheck time.Time
	for ctx.Err() == nil {
		events, next, err := r.store.Tail(ctx, cursor, r.cfg.Batch)
		if err != nil {
			r.log.Warn("relay: cannot read the ledger", "err", err)
			sleep(ctx, r.cfg.Poll)
			continue
		}
		for _, e := range events {
			if !s.deliver(ctx, out, e) {
				return
			}
		}
		if len(events) > 0 {
			cursor = next
			r.metrics.published.Add(float64(len(events)))
			r.metrics.position.Set(float64(cursor.Position))
			if err := r.saveCheckpoint(ctx, cursor); err != nil && ctx.Err() == nil {
				r.log.Warn("relay: checkpoint not saved; it will be with the next batch", "err", err)
			}
		}
		if time.Since(lastCheck) >= r.cfg.Heartbeat {
			lastCheck = time.Now()
			s.checkLag(ctx, cursor)
		}
		if len(events) == r.cfg.Batch {
			continue
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-poll.C:
		}
	}
}

// deliver hands one event to the router until it is acknowledged.
func (s *ledgerSubscriber) deliver(ctx context.Context, out chan<- *message.Message, e domain.Event) bool {
	r := s.relay
	for attempt := 0; ; attempt++ {
		msg, err := newMessage(e)
		if err != nil { // cannot happen for an event the store decoded
			r.log.Error("relay: cannot encode an event", "id", e.ID, "err", err)
			return false
		}
		msg.SetContext(ctx)
		select {
		case out <- msg:
		case <-ctx.Done():
			return false
		}
		select {
		case <-msg.Acked():
			return true
		case <-msg.Nacked():
			r.log.Warn("relay: publication failed; trying again", "id", e.ID, "position", e.Position, "attempt", attempt+1)
			if !sleep(ctx, backoff(attempt)) {
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 5)
	return min(d, 3*time.Second)
}

// checkLag measures how far the stream is behind the ledger and, as the
// relay's heartbeat, tells followers what the stream holds.
func (s *ledgerSubscriber) checkLag(ctx context.Context, cursor eventstore.Cursor) {
	r := s.relay
	n, oldest, err := r.store.Behind(ctx, cursor, behindLimit)
	if err != nil {
		r.log.Warn("relay: cannot measure the lag", "err", err)
		return
	}
	var lag time.Duration
	if n > 0 {
		lag = max(time.Since(oldest), 0)
	}
	r.metrics.lagEvents.Set(float64(n))
	r.metrics.lagSeconds.Set(lag.Seconds())
	if err := r.heartbeat(ctx, s.js, lag); err != nil && !errors.Is(err, context.Canceled) {
		r.log.Warn("relay: heartbeat not sent", "err", err)
	}
}
