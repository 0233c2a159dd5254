package notices

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/domain"
)

// Sink is what a Follower feeds.
type Sink interface {
	// Apply is given each notice, in stream order, once per stream
	// sequence. A republished event can come again under a later sequence:
	// Apply must ignore an event it has already applied.
	Apply(e domain.Event)
	// Gap is called when the follower finds notices missing (the stream
	// was purged past it, or recreated): whatever the sink learned from
	// notices may now be stale.
	Gap()
}

// Selective is a Sink that reads only some types of event. A follower
// neither decodes nor applies a notice whose type (from its subject) the
// sink does not want; it still counts it in the stream's sequence, so a gap
// is found all the same.
type Selective interface {
	Wants(eventType string) bool
}

// Follower applies a stream's notices in order to a Sink, and knows whether
// it is current: whether it has applied everything that the relay had
// published when it last said it was caught up.
//
// It reads through an ordered JetStream consumer, which NATS recreates
// after a disconnect starting after the last sequence delivered; since
// Apply runs before the next delivery, that is the last notice applied, and
// nothing is missed. It starts after the stream's last message at the time
// Run starts: a sink fills the rest from the service, the authority.
type Follower struct {
	js    jetstream.JetStream
	nc    *nats.Conn
	cfg   Config
	sink  Sink
	picky Selective // sink, if it reads only some types
	log   *slog.Logger
	now   func() time.Time
	delay prometheus.Histogram
	made  time.Time
	gaps  atomic.Uint64

	mu         sync.Mutex
	applied    uint64        // the stream sequence of the last notice applied
	heard      []heard       // heartbeats whose sequence is not applied yet, oldest first
	created    time.Time     // the creation time of the stream being read
	reset      chan struct{} // a heartbeat spoke of another incarnation of the stream
	currentAt  atomic.Int64
	appliedCnt atomic.Uint64
	started    chan struct{}
}

// FollowerOptions are a Follower's optional settings.
type FollowerOptions struct {
	Logger *slog.Logger
	Now    func() time.Time
	// Registerer, if set, receives the follower's metrics: notices
	// applied, their delay from commit, gaps, staleness.
	Registerer prometheus.Registerer
}

// NewFollower returns a follower of cfg's stream on nc.
func NewFollower(nc *nats.Conn, cfg Config, sink Sink, o FollowerOptions) (*Follower, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	f := &Follower{js: js, nc: nc, cfg: cfg.WithDefaults(), sink: sink, log: o.Logger, now: o.Now,
		made: o.Now(), started: make(chan struct{}), reset: make(chan struct{}, 1)}
	f.picky, _ = sink.(Selective)
	if o.Registerer != nil {
		if err := f.registerMetrics(o.Registerer); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Started is closed once Run has subscribed: from then on, no notice
// published later is missed.
func (f *Follower) Started() <-chan struct{} { return f.started }

// CurrentAt is the last time the follower was known to be current; the zero
// time if never.
func (f *Follower) CurrentAt() time.Time {
	ns := f.currentAt.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// CurrentWithin reports whether the follower was known to be current no
// longer than bound ago. It is cheap enough for every verification.
func (f *Follower) CurrentWithin(bound time.Duration) bool {
	ns := f.currentAt.Load()
	return ns != 0 && f.now().UnixNano()-ns <= int64(bound)
}

// Applied is the stream sequence of the last notice gone past: applied, or
// passed over because the sink does not want its type.
func (f *Follower) Applied() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// AppliedCount is how many notices the follower has gone past since Run
// started, whether its sink read them or not.
func (f *Follower) AppliedCount() uint64 { return f.appliedCnt.Load() }

// Run follows the stream until ctx ends. It returns an error only when it
// cannot start at all (no NATS, no stream); once following, it recovers from
// disconnects by itself.
func (f *Follower) Run(ctx context.Context) error {
	hb, err := f.nc.Subscribe(f.cfg.HeartbeatSubject(), f.heartbeat)
	if err != nil {
		return fmt.Errorf("follow %s: heartbeat: %w", f.cfg.Stream, err)
	}
	defer func() { _ = hb.Unsubscribe() }()
	var last uint64
	var created time.Time
	wait := 50 * time.Millisecond
	for {
		s, err := f.js.Stream(ctx, f.cfg.Stream)
		if err == nil {
			last, created = s.CachedInfo().State.LastSeq, s.CachedInfo().Created
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if wait >= time.Second {
			f.log.Warn("notices: stream not available yet", "stream", f.cfg.Stream, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
	f.mu.Lock()
	f.applied, f.created = last, created
	f.mu.Unlock()
	for ctx.Err() == nil {
		err := f.consume(ctx)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, errStreamReset) {
			f.startOver(ctx)
			continue
		}
		f.log.Warn("notices: consumer stopped; resuming", "stream", f.cfg.Stream, "after", f.Applied(), "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

var errStreamReset = errors.New("the stream was made again")

// startOver follows a stream that was deleted and made again: its
// sequences start from 1, so the follower reads it from its start, and what
// the sink learned from the old one may be stale (a Gap).
func (f *Follower) startOver(ctx context.Context) {
	s, err := f.js.Stream(ctx, f.cfg.Stream)
	if err != nil {
		f.log.Warn("notices: cannot read the remade stream", "stream", f.cfg.Stream, "err", err)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log.Warn("notices: the stream was made again; reading it from its start, dropping what the cache learned",
		"stream", f.cfg.Stream, "applied_before", f.applied)
	f.applied, f.created, f.heard = 0, s.CachedInfo().Created, nil
	f.gaps.Add(1)
	f.sink.Gap()
}

// consume reads from after the last applied sequence until the consumer
// fails for good or ctx ends.
func (f *Follower) consume(ctx context.Context) error {
	cons, err := f.js.OrderedConsumer(ctx, f.cfg.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   f.Applied() + 1,
	})
	if err != nil {
		return err
	}
	failed := make(chan error, 1)
	cc, err := cons.Consume(f.handle, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrOrderConsumerUsedAsConsume) ||
			errors.Is(err, jetstream.ErrOrderedConsumerReset) {
			select {
			case failed <- err:
			default:
			}
		}
	}))
	if err != nil {
		return err
	}
	select {
	case <-f.started:
	default:
		close(f.started)
	}
	defer cc.Stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-failed:
		return err
	case <-f.reset:
		return errStreamReset
	case <-cc.Closed():
		return errors.New("consumer closed")
	}
}

func (f *Follower) handle(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		f.log.Warn("notices: message without metadata", "err", err)
		return
	}
	seq := md.Sequence.Stream
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq <= f.applied {
		return // delivered again after a consumer reset
	}
	if seq != f.applied+1 {
		f.log.Warn("notices: gap in the stream; dropping what the cache learned from notices",
			"after", f.applied, "next", seq)
		f.gaps.Add(1)
		f.sink.Gap()
	}
	if !f.wants(m.Subject()) {
		f.pass(seq)
		return
	}
	e, err := Decode(m.Data())
	if err != nil {
		// A type this build does not know: skipped, and said.
		f.log.Warn("notices: cannot read a notice; skipped", "seq", seq, "subject", m.Subject(), "err", err)
	} else {
		f.sink.Apply(e)
		if f.delay != nil {
			f.delay.Observe(f.now().Sub(e.OccurredAt).Seconds())
		}
	}
	f.pass(seq)
}

// pass moves the follower past the notice at seq, applied or not; f.mu is
// held.
func (f *Follower) pass(seq uint64) {
	f.appliedCnt.Add(1)
	f.applied = seq
	for len(f.heard) > 0 && f.applied >= f.heard[0].seq {
		f.markCurrent(f.heard[0].at)
		f.heard = f.heard[1:]
	}
}

// wants tells whether the sink reads the notice published on subject: the
// event type is what follows the prefix and the organization.
func (f *Follower) wants(subject string) bool {
	if f.picky == nil {
		return true
	}
	rest, ok := strings.CutPrefix(subject, f.cfg.Prefix+".")
	if !ok {
		return true
	}
	// An organization id holds no dot, so the type follows the first one.
	// Anything else (an organization id with a dot, imported around the
	// commands' checks; a type this build does not know) is decoded, as
	// every notice was before.
	org, eventType, ok := strings.Cut(rest, ".")
	if !ok || !domain.ValidOrgID(org) {
		return true
	}
	switch eventType {
	case domain.TypeKeyGenerated, domain.TypeKeyRevoked:
		return f.picky.Wants(eventType)
	}
	return true
}

// heard is a heartbeat waiting for the follower to reach its sequence.
type heard struct {
	seq uint64
	at  time.Time
}

// maxHeard bounds the heartbeats kept waiting; when a follower is that far
// behind, the oldest are dropped, which only delays its being current.
const maxHeard = 64

func (f *Follower) heartbeat(m *nats.Msg) {
	var hb Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil {
		f.log.Warn("notices: bad heartbeat", "err", err)
		return
	}
	select {
	case <-f.started:
	default:
		return // not reading the stream yet: it cannot vouch for this follower
	}
	at := f.now().Add(-hb.Lag())
	f.mu.Lock()
	defer f.mu.Unlock()
	if !hb.StreamCreated.IsZero() && !f.created.IsZero() && !hb.StreamCreated.Equal(f.created) {
		// Another incarnation of the stream: its sequences say nothing
		// of what this follower applied.
		select {
		case f.reset <- struct{}{}:
		default:
		}
		return
	}
	if f.applied >= hb.StreamSeq {
		f.markCurrent(at)
		return
	}
	// Current as of at once the notices up to hb.StreamSeq are applied.
	if len(f.heard) == maxHeard {
		f.heard = f.heard[1:]
	}
	f.heard = append(f.heard, heard{hb.StreamSeq, at})
}

func (f *Follower) markCurrent(at time.Time) {
	if ns := at.UnixNano(); ns > f.currentAt.Load() {
		f.currentAt.Store(ns)
	}
}
