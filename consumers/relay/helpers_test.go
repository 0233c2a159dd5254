package relay_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/consumers/relay"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/natstest"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// The tests run on the real Postgres (a database of their own, from
// internal/pgtest) and the real NATS: the shared server for most, each with a
// subject prefix and stream of its own, and an embedded nats-server that the
// test stops and restarts for the outage tests.

// bundle is what a relay test needs: a database, a store and a ledger on it,
// a NATS URL and a stream of its own.
type bundle struct {
	pool   *pgxpool.Pool
	store  *eventstore.Store
	ledger *domain.Ledger
	url    string // NATS
	dbURL  string
	cfg    notices.Config
	nc     *nats.Conn // the test's own connection, for reading the stream
	js     jetstream.JetStream
}

type option func(*bundle)

func withNATS(url string) option { return func(b *bundle) { b.url = url } }

func withDuplicateWindow(d time.Duration) option {
	return func(b *bundle) { b.cfg.DuplicateWindow = d }
}

func setup(t *testing.T, opts ...option) *bundle {
	t.Helper()
	suffix := natstest.Random(12)
	b := &bundle{url: natstest.URL(), cfg: notices.Config{Prefix: "t" + suffix, Stream: "T" + suffix}}
	for _, o := range opts {
		o(b)
	}
	b.cfg = b.cfg.WithDefaults()
	b.dbURL = pgtest.NewDatabase(t)
	b.pool = pgtest.PoolFor(t, b.dbURL, 8)
	b.store = eventstore.New(b.pool)
	b.ledger = &domain.Ledger{Store: b.store, KeyPrefix: domain.DefaultKeyPrefix, Now: time.Now}
	b.nc = connect(t, b.url)
	var err error
	b.js, err = jetstream.New(b.nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := notices.EnsureStream(ctx, b.js, b.cfg); err != nil {
		t.Fatalf("make stream %s: %v\n%s", b.cfg.Stream, err, natstest.Hint)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.js.DeleteStream(ctx, b.cfg.Stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("delete stream %s: %v", b.cfg.Stream, err)
		}
	})
	return b
}

// connect opens a NATS connection that reconnects for ever, closed when t
// ends.
func connect(t *testing.T, url string, more ...nats.Option) *nats.Conn {
	t.Helper()
	return natstest.Connect(t, url, append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond),
		nats.Timeout(2 * time.Second)}, more...)...)
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// relayConfig is a relay's configuration for tests: quick heartbeats,
// leadership checks and publish timeouts.
func (b *bundle) relayConfig(reg prometheus.Registerer) relay.Config {
	return relay.Config{
		Notices:        b.cfg,
		Heartbeat:      100 * time.Millisecond,
		LeaderInterval: 250 * time.Millisecond,
		PublishTimeout: time.Second,
		Registerer:     reg,
	}
}

// running is a relay running in the background.
type running struct {
	relay *relay.Relay
	reg   *prometheus.Registry
	stop  func()
}

// startRelay runs a new relay of store on its own NATS connection until stop
// is called or the test ends.
func (b *bundle) startRelay(t *testing.T, store *eventstore.Store, mod func(*relay.Config)) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := b.relayConfig(reg)
	if mod != nil {
		mod(&cfg)
	}
	// setup checked that NATS is reachable; the relay's connection may be
	// made while it is down (the outage tests), and connects when it is up.
	r, err := relay.New(store, connect(t, b.url, nats.RetryOnFailedConnect(true)), cfg)
	require.NoError(t, err)
	ru := &running{relay: r, reg: reg}
	ru.stop = runInBackground(t, r.Run)
	return ru
}

// runInBackground runs run until the returned stop is called (or t ends),
// and stop waits for it to return.
func runInBackground(t *testing.T, run func(context.Context)) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Error("did not stop within 20 s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// metric reads a gauge or counter of a registry; 0 if it is not there.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// waitFor polls cond until it holds, for at most within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// generate runs GenerateKey and returns the new key's id.
func (b *bundle) generate(t *testing.T, ledger *domain.Ledger, org string) string {
	t.Helper()
	g, err := ledger.GenerateKey(context.Background(), domain.GenerateKey{OrgID: org, Name: "key", Actor: "test"}, "")
	require.NoError(t, err)
	return g.Key.ID
}

func (b *bundle) revoke(t *testing.T, ledger *domain.Ledger, org, keyID string) {
	t.Helper()
	_, err := ledger.RevokeKey(context.Background(), domain.RevokeKey{OrgID: org, KeyID: keyID, Reason: "test", Actor: "test"})
	require.NoError(t, err)
}

// commands runs n commands on ledger across two organizations, generating
// keys and revoking every third one, and returns how many events they made.
func (b *bundle) commands(t *testing.T, ledger *domain.Ledger, n int) int {
	t.Helper()
	events := 0
	for i := range n {
		org := fmt.Sprintf("org_%d", i%2)
		id := b.generate(t, ledger, org)
		events++
		if i%3 == 0 {
			b.revoke(t, ledger, org, id)
			events++
		}
	}
	return events
}

// ledgerOrder reads every committed event in ledger order through Tail,
// waiting until it has read as many as the table holds, and checks that
// order against a plain SELECT's, so that the expectation of a relay test
// does not rest on the very read the relay makes.
func (b *bundle) ledgerOrder(t *testing.T) []domain.Event {
	t.Helper()
	var total int
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&total))
	var out []domain.Event
	var c eventstore.Cursor
	deadline := time.Now().Add(30 * time.Second)
	for len(out) < total {
		events, next, err := b.store.Tail(context.Background(), c, 1000)
		require.NoError(t, err)
		out = append(out, events...)
		c = next
		if len(events) == 0 {
			require.False(t, time.Now().After(deadline), "ledger read %d of %d events", len(out), total)
			time.Sleep(10 * time.Millisecond)
		}
	}
	rows, err := b.pool.Query(context.Background(), `SELECT id::text FROM events ORDER BY events.transaction_id, events.position`)
	require.NoError(t, err)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, want, ids(out), "Tail did not read the ledger in ledger order")
	return out
}

// streamInfo returns the stream's state.
func (b *bundle) streamState(t *testing.T) jetstream.StreamState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	require.NoError(t, err)
	return s.CachedInfo().State
}

// streamMessages returns the messages the stream holds, in sequence order.
func (b *bundle) streamMessages(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	require.NoError(t, err)
	st := s.CachedInfo().State
	var out []*jetstream.RawStreamMsg
	if st.Msgs == 0 {
		return nil
	}
	for seq := st.FirstSeq; seq <= st.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(t, err)
		out = append(out, m)
	}
	return out
}

// waitStreamMsgs waits until the stream holds n messages.
func (b *bundle) waitStreamMsgs(t *testing.T, within time.Duration, n uint64) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("%d messages in stream %s", n, b.cfg.Stream), func() bool {
		return b.streamState(t).Msgs >= n
	})
	require.Equal(t, n, b.streamState(t).Msgs, "more messages in the stream than events")
}

// requireStreamIsLedger checks that the stream holds exactly the ledger's
// events, in ledger order, each on its subject with Nats-Msg-Id = event id.
func (b *bundle) requireStreamIsLedger(t *testing.T, ledger []domain.Event, msgs []*jetstream.RawStreamMsg) {
	t.Helper()
	b.requireStream(t, ledger, msgs, false)
}

// requireStreamIsRepublished is requireStreamIsLedger for messages that
// Republish sent: their Nats-Msg-Id is "<event id>.republished.<run>".
func (b *bundle) requireStreamIsRepublished(t *testing.T, ledger []domain.Event, msgs []*jetstream.RawStreamMsg) {
	t.Helper()
	b.requireStream(t, ledger, msgs, true)
}

func (b *bundle) requireStream(t *testing.T, ledger []domain.Event, msgs []*jetstream.RawStreamMsg, republished bool) {
	t.Helper()
	require.Len(t, msgs, len(ledger))
	for i, e := range ledger {
		m := msgs[i]
		require.Equal(t, b.cfg.Subject(e.OrgID, e.Type), m.Subject, "message %d", i)
		if republished {
			require.True(t, strings.HasPrefix(m.Header.Get(jetstream.MsgIDHeader), e.ID+".republished."),
				"message %d: Nats-Msg-Id %q", i, m.Header.Get(jetstream.MsgIDHeader))
		} else {
			require.Equal(t, e.ID, m.Header.Get(jetstream.MsgIDHeader), "message %d: Nats-Msg-Id", i)
		}
		got, err := notices.Decode(m.Data)
		require.NoError(t, err)
		requireSameEvent(t, e, got)
	}
}

func requireSameEvent(t *testing.T, want, got domain.Event) {
	t.Helper()
	require.True(t, want.OccurredAt.Equal(got.OccurredAt), "occurred_at: want %s, got %s", want.OccurredAt, got.OccurredAt)
	got.OccurredAt = want.OccurredAt
	require.Equal(t, want, got)
}

// recorder is a Sink that keeps what it is given, and counts applications
// per event id.
type recorder struct {
	mu      sync.Mutex
	applied []domain.Event
	count   map[string]int
	gaps    int
}

func newRecorder() *recorder { return &recorder{count: map[string]int{}} }

func (r *recorder) Apply(e domain.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, e)
	r.count[e.ID]++
}

func (r *recorder) Gap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gaps++
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applied)
}

func (r *recorder) snapshot() []domain.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]domain.Event(nil), r.applied...)
}

// requireAppliedOnceInOrder checks that the recorder was given exactly the
// ledger's events, in order, each once, with no gap.
func (r *recorder) requireAppliedOnceInOrder(t *testing.T, ledger []domain.Event) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, n := range r.count {
		require.Equal(t, 1, n, "event %s applied %d times", id, n)
	}
	require.Zero(t, r.gaps, "gaps")
	require.Equal(t, ids(ledger), ids(r.applied))
}

func ids(events []domain.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

// startFollower runs a follower of the bundle's stream into sink on its own
// connection, until the test ends, and waits until it has started.
func (b *bundle) startFollower(t *testing.T, sink notices.Sink) *notices.Follower {
	t.Helper()
	f, err := notices.NewFollower(connect(t, b.url), b.cfg, sink, notices.FollowerOptions{})
	require.NoError(t, err)
	runInBackground(t, func(ctx context.Context) {
		if err := f.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("follower: %v", err)
		}
	})
	select {
	case <-f.Started():
	case <-time.After(20 * time.Second):
		t.Fatal("follower did not start")
	}
	return f
}

// checkpoint reads the relay's checkpoint position; -1 if there is none.
func (b *bundle) checkpoint(t *testing.T) int64 {
	t.Helper()
	var pos int64 = -1
	err := b.pool.QueryRow(context.Background(), `SELECT position FROM relay_checkpoints WHERE name = $1`, b.cfg.Stream).Scan(&pos)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		require.NoError(t, err)
	}
	return pos
}

// embedded is a nats-server run in this process on a fixed port and store
// directory, so that a test can stop it and start it again where clients
// reconnect to it.
type embedded struct {
	t    *testing.T
	opts server.Options
	mu   sync.Mutex
	srv  *server.Server
}

func startEmbedded(t *testing.T) *embedded {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	e := &embedded{t: t, opts: server.Options{
		ServerName: "keyledger-test",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(t.TempDir(), "nats"),
		NoSigs:     true,
		NoLog:      true,
	}}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *embedded) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", e.opts.Port) }

func (e *embedded) start() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	opts := e.opts
	s, err := server.NewServer(&opts)
	require.NoError(e.t, err)
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		s.Shutdown()
		e.t.Fatalf("embedded NATS did not start on port %d", e.opts.Port)
	}
	e.srv = s
}

func (e *embedded) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv == nil {
		return
	}
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.srv = nil
}
