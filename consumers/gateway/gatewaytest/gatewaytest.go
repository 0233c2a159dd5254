// Package gatewaytest runs what a gateway talks to, for tests: the real
// keyledger service on a database of its own (internal/pgtest), and a
// JetStream stream of notices of its own on the real NATS server, which the
// test fills itself (it plays the relay: Publish, Heartbeat), so that gateway
// tests do not depend on the relay's timing.
//
// NATS is the server named by KEYLEDGER_TEST_NATS_URL, by default
// nats://127.0.0.1:4222. When it cannot be reached the test fails, saying how
// to start it; it is never skipped.
package gatewaytest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/natstest"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/internal/service"
)

// AdminToken is the service's admin token.
const AdminToken = "gatewaytest-admin-token-0123456789"

// KeyPrefix is the prefix of the service's keys.
const KeyPrefix = "kl"

// VerifyHook, if set, serves the service's /v1/verify requests in place of
// the service; next is the real handler.
type VerifyHook func(w http.ResponseWriter, r *http.Request, next http.Handler)

// Env is a running service and a stream of notices of a test's own.
type Env struct {
	t       testing.TB
	Service *httptest.Server
	Notices notices.Config
	NC      *nats.Conn // the test's own connection, which plays the relay
	JS      jetstream.JetStream
	Stream  jetstream.Stream

	hook        atomic.Pointer[VerifyHook]
	verifyCalls atomic.Int64
	client      *http.Client
}

// New starts the service on a fresh database and creates a stream for t,
// deleted when t ends.
func New(t testing.TB) *Env {
	t.Helper()
	e := &Env{t: t, client: &http.Client{Timeout: 30 * time.Second}}
	pool := pgtest.NewPool(t)
	h := service.NewHandler(pool, service.Options{AdminToken: AdminToken, KeyPrefix: KeyPrefix,
		Logger: slog.New(slog.DiscardHandler)})
	e.Service = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/verify" {
			e.verifyCalls.Add(1)
			if hook := e.hook.Load(); hook != nil {
				(*hook)(w, r, h)
				return
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(e.Service.Close)

	suffix := natstest.Random(10)
	e.Notices = notices.Config{Prefix: "t" + suffix, Stream: "T" + suffix}.WithDefaults()
	e.NC = natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(e.NC)
	if err != nil {
		t.Fatal(err)
	}
	e.JS = js
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e.Stream, err = notices.EnsureStream(ctx, js, e.Notices)
	if err != nil {
		t.Fatalf("gatewaytest: %v\n%s", err, natstest.Hint)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, e.Notices.Stream); err != nil {
			t.Logf("gatewaytest: delete stream %s: %v", e.Notices.Stream, err)
		}
	})
	return e
}

// SetVerifyHook puts h in front of the service's /v1/verify; nil removes it.
func (e *Env) SetVerifyHook(h VerifyHook) {
	if h == nil {
		e.hook.Store(nil)
		return
	}
	e.hook.Store(&h)
}

// VerifyCalls is how many /v1/verify requests the service received.
func (e *Env) VerifyCalls() int64 { return e.verifyCalls.Load() }

// Generate issues a key through the service's API and returns its id and
// plaintext.
func (e *Env) Generate(orgID, name string, expiresAt *time.Time) (keyID, secret string) {
	e.t.Helper()
	body := map[string]any{"name": name, "expires_at": nil}
	if expiresAt != nil {
		body["expires_at"] = expiresAt.UTC().Format(time.RFC3339Nano)
	}
	var out struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	e.call(http.MethodPost, "/v1/orgs/"+orgID+"/keys", body, http.StatusCreated, &out)
	return out.ID, out.Key
}

// Revoke revokes a key through the service's API and returns the
// key.revoked event it appended, ready to be published.
func (e *Env) Revoke(orgID, keyID string) domain.Event {
	e.t.Helper()
	e.call(http.MethodPost, "/v1/orgs/"+orgID+"/keys/"+keyID+"/revoke", map[string]any{"reason": "test"}, http.StatusOK, nil)
	events := e.Events(orgID, keyID)
	last := events[len(events)-1]
	if last.Type != domain.TypeKeyRevoked {
		e.t.Fatalf("gatewaytest: last event of %s is %s, want %s", keyID, last.Type, domain.TypeKeyRevoked)
	}
	return last
}

// Events returns a key's history, as the service's API gives it.
func (e *Env) Events(orgID, keyID string) []domain.Event {
	e.t.Helper()
	var out struct {
		Events []domain.Event `json:"events"`
	}
	e.call(http.MethodGet, "/v1/orgs/"+orgID+"/keys/"+keyID+"/events", nil, http.StatusOK, &out)
	return out.Events
}

func (e *Env) call(method, path string, body any, want int, out any) {
	e.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.Service.URL+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+AdminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("gatewaytest: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		e.t.Fatalf("gatewaytest: %s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("gatewaytest: %s %s: %v: %s", method, path, err, b)
		}
	}
}

// Publish puts an event on the stream, as the relay does, and returns its
// stream sequence.
func (e *Env) Publish(ev domain.Event) uint64 {
	e.t.Helper()
	body, err := notices.Encode(ev)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ack, err := e.JS.Publish(ctx, e.Notices.Subject(ev.OrgID, ev.Type), body, jetstream.WithMsgID(ev.ID))
	if err != nil {
		e.t.Fatalf("gatewaytest: publish %s: %v", ev.ID, err)
	}
	return ack.Sequence
}

// LastSeq is the stream's last sequence.
func (e *Env) LastSeq() uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := e.Stream.Info(ctx)
	if err != nil {
		e.t.Fatalf("gatewaytest: stream info: %v", err)
	}
	return info.State.LastSeq
}

// Heartbeat announces, as the relay does, that the stream holds every event
// up to its last sequence.
func (e *Env) Heartbeat() {
	e.t.Helper()
	if err := e.heartbeat(); err != nil {
		e.t.Fatalf("gatewaytest: heartbeat: %v", err)
	}
}

func (e *Env) heartbeat() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := e.Stream.Info(ctx)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(notices.Heartbeat{StreamSeq: info.State.LastSeq})
	if err := e.NC.Publish(e.Notices.HeartbeatSubject(), b); err != nil {
		return err
	}
	return e.NC.FlushTimeout(10 * time.Second)
}

// StartHeartbeats sends a heartbeat every interval until the returned stop
// is called (or t ends).
func (e *Env) StartHeartbeats(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			_ = e.heartbeat()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	e.t.Cleanup(stop)
	return stop
}

// Proxy is a TCP proxy that a test can cut and restore, to take a server
// away from a client without stopping the server.
type Proxy struct {
	t      testing.TB
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
}

// NewProxy forwards a loopback port to target (host:port), until t ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p := &Proxy{t: t, target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.Cut)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.addr }

// URL is the proxy's address with a scheme.
func (p *Proxy) URL(scheme string) string { return scheme + "://" + p.addr }

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
}

func (p *Proxy) pipe(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil { // cut meanwhile
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// Cut closes the listener and every connection through it.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Restore listens again on the same address.
func (p *Proxy) Restore() {
	p.t.Helper()
	var ln net.Listener
	var err error
	for range 100 { // the port can take a moment to be free again
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("gatewaytest: proxy restore %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// HostPort returns the host:port of a URL such as nats://127.0.0.1:4222.
func HostPort(url string) string {
	if i := strings.Index(url, "://"); i >= 0 {
		url = url[i+3:]
	}
	return strings.TrimSuffix(url, "/")
}
