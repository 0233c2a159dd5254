package notices_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/natstest"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	require.NoError(t, notices.Config{}.WithDefaults().Validate())
	require.NoError(t, notices.Config{Prefix: "a.b-c.d_e", Stream: "S_1-x"}.Validate())
	for _, bad := range []notices.Config{
		{Prefix: "", Stream: "S"},
		{Prefix: "a.*", Stream: "S"},
		{Prefix: "a.>", Stream: "S"},
		{Prefix: "a..b", Stream: "S"},
		{Prefix: ".a", Stream: "S"},
		{Prefix: "a b", Stream: "S"},
		{Prefix: "a", Stream: ""},
		{Prefix: "a", Stream: "S.T"},
		{Prefix: "a", Stream: "S*"},
		{Prefix: "a", Stream: strings.Repeat("S", 65)},
		{Prefix: "a", Stream: "S", DuplicateWindow: -time.Second},
	} {
		require.Error(t, bad.Validate(), "%+v", bad)
	}
	// Every problem is reported at once.
	err := notices.Config{Prefix: "a.*", Stream: "S.T", DuplicateWindow: -1}.Validate()
	require.ErrorContains(t, err, "prefix")
	require.ErrorContains(t, err, "stream")
	require.ErrorContains(t, err, "duplicate window")
}

func TestConfigDefaultsAreDesignSection5(t *testing.T) {
	t.Parallel()
	c := notices.Config{}.WithDefaults()
	require.Equal(t, "keyledger", c.Prefix)
	require.Equal(t, "KEYLEDGER", c.Stream)
	require.Equal(t, notices.DefaultDuplicateWindow, c.DuplicateWindow)
	require.Equal(t, "keyledger.org_1.key.generated", c.Subject("org_1", domain.TypeKeyGenerated))
	require.Equal(t, "keyledger.org_1.key.revoked", c.Subject("org_1", domain.TypeKeyRevoked))
	require.Equal(t, "keyledger.>", c.Subjects())
	// Explicitly set fields are kept.
	c = notices.Config{Prefix: "p", Stream: "S", DuplicateWindow: time.Second}.WithDefaults()
	require.Equal(t, notices.Config{Prefix: "p", Stream: "S", DuplicateWindow: time.Second}, c)
}

// TestHeartbeatSubjectIsOutsideTheStream: heartbeats must not be kept in the
// stream, so their subject must not match the stream's filter.
func TestHeartbeatSubjectIsOutsideTheStream(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"keyledger", "a.b", "t123"} {
		c := notices.Config{Prefix: prefix}.WithDefaults()
		hb := c.HeartbeatSubject()
		require.False(t, subjectMatches(c.Subjects(), hb), "%s matches %s", hb, c.Subjects())
		require.True(t, subjectMatches(c.Subjects(), c.Subject("org", domain.TypeKeyRevoked)))
	}
}

// subjectMatches is NATS subject matching with * and >.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	at := domain.Truncate(time.Now())
	e := domain.Event{ID: domain.NewEventID(), Type: domain.TypeKeyRevoked, OrgID: "org", KeyID: domain.NewKeyID(),
		StreamVersion: 2, OccurredAt: at, Actor: "a", Position: 7,
		Data: domain.KeyRevoked{KeyID: "k", KeyHash: "h", Reason: "r"}}
	b, err := notices.Encode(e)
	require.NoError(t, err)
	got, err := notices.Decode(b)
	require.NoError(t, err)
	require.True(t, got.OccurredAt.Equal(e.OccurredAt))
	got.OccurredAt = e.OccurredAt
	require.Equal(t, e, got)
	_, err = notices.Decode([]byte(`{"type":"key.unknown"}`))
	require.Error(t, err)
}

func TestHeartbeatLag(t *testing.T) {
	t.Parallel()
	require.Equal(t, 1500*time.Millisecond, notices.Heartbeat{LagSeconds: 1.5}.Lag())
	require.Zero(t, notices.Heartbeat{}.Lag())
}

// --- Follower, on the real NATS ---

// natsSetup connects to the shared NATS server and makes a stream of the
// test's own, deleted when the test ends.
func natsSetup(t *testing.T) (*nats.Conn, jetstream.JetStream, jetstream.Stream, notices.Config) {
	t.Helper()
	nc := natstest.Connect(t, natstest.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	suffix := natstest.Random(12)
	cfg := notices.Config{Prefix: "t" + suffix, Stream: "T" + suffix}.WithDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := notices.EnsureStream(ctx, js, cfg)
	if err != nil {
		t.Fatalf("make stream: %v\n%s", err, natstest.Hint)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, cfg.Stream)
	})
	return nc, js, s, cfg
}

// sink records what a follower gives it.
type sink struct {
	mu      sync.Mutex
	applied []domain.Event
	gaps    int
}

func (s *sink) Apply(e domain.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = append(s.applied, e)
}

func (s *sink) Gap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gaps++
}

func (s *sink) snapshot() ([]domain.Event, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]domain.Event(nil), s.applied...), s.gaps
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time   { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) set(at time.Time) { c.ns.Store(at.UnixNano()) }

func event(org string, version int64) domain.Event {
	return domain.Event{ID: domain.NewEventID(), Type: domain.TypeKeyGenerated, OrgID: org, KeyID: domain.NewKeyID(),
		StreamVersion: version, OccurredAt: domain.Truncate(time.Now()), Actor: "t",
		Data: domain.KeyGenerated{KeyID: "k", Name: "n", KeyHash: "h", Masked: "m"}}
}

func publish(t *testing.T, js jetstream.JetStream, cfg notices.Config, e domain.Event) uint64 {
	t.Helper()
	body, err := notices.Encode(e)
	require.NoError(t, err)
	ack, err := js.Publish(context.Background(), cfg.Subject(e.OrgID, e.Type), body, jetstream.WithMsgID(e.ID))
	require.NoError(t, err)
	return ack.Sequence
}

func sendHeartbeat(t *testing.T, nc *nats.Conn, cfg notices.Config, hb notices.Heartbeat) {
	t.Helper()
	b, err := json.Marshal(hb)
	require.NoError(t, err)
	require.NoError(t, nc.Publish(cfg.HeartbeatSubject(), b))
	require.NoError(t, nc.Flush())
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startFollower runs a follower on its own connection until the test ends.
func startFollower(t *testing.T, cfg notices.Config, s notices.Sink, clock *fakeClock) *notices.Follower {
	t.Helper()
	nc := natstest.Connect(t, natstest.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	o := notices.FollowerOptions{}
	if clock != nil {
		o.Now = clock.now
	}
	f, err := notices.NewFollower(nc, cfg, s, o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("follower did not stop")
		}
	})
	select {
	case <-f.Started():
	case err := <-done:
		t.Fatalf("follower stopped: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("follower did not start")
	}
	return f
}

// TestFollowerIsCurrentOnlyOnceItHasAppliedTheHeartbeatsSequence protects
// the staleness bound of gateways: a heartbeat makes a follower current only
// when it has applied every notice up to the heartbeat's stream sequence,
// and current as of when it heard the heartbeat less the relay's lag.
func TestFollowerIsCurrentOnlyOnceItHasAppliedTheHeartbeatsSequence(t *testing.T) {
	t.Parallel()
	nc, js, _, cfg := natsSetup(t)
	// Two notices before the follower starts: it begins after them.
	publish(t, js, cfg, event("org", 1))
	publish(t, js, cfg, event("org", 1))

	base := time.Unix(1_700_000_000, 0)
	clock := &fakeClock{}
	clock.set(base)
	s := &sink{}
	f := startFollower(t, cfg, s, clock)
	require.Equal(t, uint64(2), f.Applied())
	require.True(t, f.CurrentAt().IsZero(), "current before any heartbeat")
	require.False(t, f.CurrentWithin(time.Hour))

	// A heartbeat for what it has applied makes it current at once.
	sendHeartbeat(t, nc, cfg, notices.Heartbeat{StreamSeq: 2})
	waitFor(t, "current after a heartbeat for seq 2", func() bool { return f.CurrentAt().Equal(base) })
	require.True(t, f.CurrentWithin(0))

	// A heartbeat ahead of it waits for the notices; a later heartbeat it
	// has applied, with a lag, tells us (the subscription delivers in
	// order) that the first one was heard, and the lag is subtracted.
	clock.set(base.Add(10 * time.Second))
	sendHeartbeat(t, nc, cfg, notices.Heartbeat{StreamSeq: 4})
	sendHeartbeat(t, nc, cfg, notices.Heartbeat{StreamSeq: 2, LagSeconds: 1})
	waitFor(t, "current as of the probe less its lag", func() bool { return f.CurrentAt().Equal(base.Add(9 * time.Second)) })
	require.True(t, f.CurrentWithin(time.Second))
	require.False(t, f.CurrentWithin(999*time.Millisecond))

	clock.set(base.Add(20 * time.Second))
	publish(t, js, cfg, event("org", 1))
	waitFor(t, "seq 3 applied", func() bool { return f.Applied() == 3 })
	require.Equal(t, base.Add(9*time.Second), f.CurrentAt(), "current before applying the heartbeat's sequence")

	publish(t, js, cfg, event("org", 1))
	waitFor(t, "seq 4 applied", func() bool { return f.Applied() == 4 })
	// Current as of when the heartbeat was heard, not when seq 4 was applied.
	require.Equal(t, base.Add(10*time.Second), f.CurrentAt())
	require.Equal(t, uint64(2), f.AppliedCount())

	// currentAt never moves back: an old heartbeat with a large lag.
	sendHeartbeat(t, nc, cfg, notices.Heartbeat{StreamSeq: 1, LagSeconds: 100})
	sendHeartbeat(t, nc, cfg, notices.Heartbeat{StreamSeq: 4, LagSeconds: 5})
	waitFor(t, "probe", func() bool { return f.CurrentAt().Equal(base.Add(15 * time.Second)) })

	applied, gaps := s.snapshot()
	require.Len(t, applied, 2)
	require.Zero(t, gaps)
}

// TestFollowerCallsGapWhenNoticesAreMissing: when the stream skips
// sequences the follower has not read (purged past it, or messages deleted),
// the sink is told that what it learned may be stale.
func TestFollowerCallsGapWhenNoticesAreMissing(t *testing.T) {
	t.Parallel()
	_, js, stream, cfg := natsSetup(t)
	s := &sink{}
	f := startFollower(t, cfg, s, nil)
	first := event("org", 1)
	publish(t, js, cfg, first)
	waitFor(t, "seq 1 applied", func() bool { return f.Applied() == 1 })

	// The stream jumps past sequences 2..9 the follower never read.
	ctx := context.Background()
	require.NoError(t, stream.Purge(ctx, jetstream.WithPurgeSequence(10)))
	next := event("org", 1)
	seq := publish(t, js, cfg, next)
	require.Equal(t, uint64(10), seq)
	waitFor(t, "seq 10 applied", func() bool { return f.Applied() == 10 })
	applied, gaps := s.snapshot()
	require.Equal(t, 1, gaps)
	require.Equal(t, []string{first.ID, next.ID}, ids(applied))
}

func ids(events []domain.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

// revocationsOnly is a sink that reads revocations only, as the key caches
// do.
type revocationsOnly struct{ sink }

func (*revocationsOnly) Wants(eventType string) bool { return eventType == domain.TypeKeyRevoked }

// TestFollowerSkipsTheNoticesASelectiveSinkDoesNotWant: the sink sees only
// the types it wants, while the follower still goes past every sequence:
// it becomes current on a heartbeat for an unwanted notice's sequence, and
// it still finds a gap.
func TestFollowerSkipsTheNoticesASelectiveSinkDoesNotWant(t *testing.T) {
	t.Parallel()
	nc, js, stream, cfg := natsSetup(t)
	s := &revocationsOnly{}
	f := startFollower(t, cfg, s, nil)
	revoked := event("org", 2)
	revoked.Type, revoked.Data = domain.TypeKeyRevoked, domain.KeyRevoked{KeyID: "k", KeyHash: "h", Reason: "r"}
	publish(t, js, cfg, event("org", 1))
	publish(t, js, cfg, revoked)
	publish(t, js, cfg, event("org", 1))
	waitFor(t, "seq 3 gone past", func() bool { return f.Applied() == 3 })
	sendHeartbeat(t, nc, cfg, notices.Heartbeat{StreamSeq: 3})
	waitFor(t, "current after a heartbeat for an unwanted notice's sequence", func() bool { return f.CurrentWithin(time.Minute) })
	require.Equal(t, uint64(3), f.AppliedCount())
	applied, gaps := s.snapshot()
	require.Equal(t, []string{revoked.ID}, ids(applied))
	require.Zero(t, gaps)

	// An organization id with a dot (only an import could store one) makes
	// the subject ambiguous: the notice is decoded, and the revocation
	// still reaches the sink.
	dotted := event("a.b", 2)
	dotted.Type, dotted.Data = domain.TypeKeyRevoked, domain.KeyRevoked{KeyID: "k", KeyHash: "h", Reason: "r"}
	publish(t, js, cfg, dotted)
	waitFor(t, "seq 4 gone past", func() bool { return f.Applied() == 4 })
	applied, _ = s.snapshot()
	require.Equal(t, []string{revoked.ID, dotted.ID}, ids(applied))

	// A gap under unwanted notices is still a gap.
	require.NoError(t, stream.Purge(context.Background(), jetstream.WithPurgeSequence(10)))
	require.Equal(t, uint64(10), publish(t, js, cfg, event("org", 1)))
	waitFor(t, "seq 10 gone past", func() bool { return f.Applied() == 10 })
	_, gaps = s.snapshot()
	require.Equal(t, 1, gaps)
}
