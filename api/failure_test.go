package api_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

// proxy forwards TCP connections to Postgres until cut: then it closes every
// connection it carries and refuses new ones, as a database that went away.
type proxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func newProxy(t *testing.T, dbURL string) *proxy {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, upstream: net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))}
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
	})
	return p
}

// url returns dbURL with the proxy as its host.
func (p *proxy) url(dbURL string) string {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", cfg.User, p.ln.Addr(), cfg.Database)
}

func (p *proxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.forward(client)
	}
}

func (p *proxy) forward(client net.Conn) {
	if !p.track(client) {
		return
	}
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(server) {
		_ = client.Close()
		return
	}
	go func() {
		_, _ = io.Copy(server, client)
		_ = server.Close()
	}()
	_, _ = io.Copy(client, server)
	_ = client.Close()
}

// track registers a connection to close on cut; it closes it at once and
// reports false when the proxy is already down.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		_ = c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

// cut closes every proxied connection and refuses new ones.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// metric reads an unlabelled metric's value from /metrics; -1 if absent.
func (b *bundle) metric(t testing.TB, name string) float64 {
	t.Helper()
	res := b.do(t, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusOK, res.Status)
	for _, line := range strings.Split(string(res.Body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err, line)
			return f
		}
	}
	return -1
}

// tableCounts counts the rows of the tables a generate writes.
func (b *bundle) tableCounts(t testing.TB) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range []string{"events", "idempotency_keys", "key_list", "key_lookup"} {
		out[table] = b.count(t, `SELECT count(*) FROM `+table)
	}
	return out
}

func TestPostgresGoneMidGenerateAnswers503AndWritesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, viaProxy(), withConns(4))
	ctx := context.Background()
	before := b.generate(t, "acme", "before-the-outage", nil)
	counts := b.tableCounts(t)

	// A direct session holds the key list, so that the generate's transaction
	// stops after inserting its event, inside the inline projection.
	locker, err := pgx.Connect(ctx, b.dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = locker.Close(context.Background()) })
	_, err = locker.Exec(ctx, `BEGIN; LOCK TABLE key_list IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	type result struct {
		res *response
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := b.send(http.MethodPost, keysPath("acme"), genBody("during-the-outage", nil),
			bearer, hdr("Idempotency-Key", "outage-1"))
		done <- result{res, err}
	}()

	// Wait until the generate is blocked on the lock, with its event
	// inserted, in a transaction that has not sent COMMIT: the one it runs
	// again once its one-round-trip transaction, which commits without
	// waiting to hear from the service again, has waited on the lock for as
	// long as it may (20 ms) and rolled back.
	var dbName string
	require.NoError(t, locker.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName))
	blocked := func() bool {
		var n int
		require.NoError(t, b.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO key_list%'`, dbName).Scan(&n))
		return n == 1
	}
	eventually(t, "the generate to block on the key list in a transaction of its own", func() bool {
		return b.metric(t, "keyledger_append_lock_waits_total") == 1 && blocked()
	})

	b.proxy.cut()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the generate did not answer after the database went away")
	}
	require.NoError(t, r.err)
	p := requireProblem(t, r.res, http.StatusServiceUnavailable)
	require.Equal(t, "1", r.res.Header.Get("Retry-After"))
	require.Equal(t, "https://keyledger.dev/problems/unavailable", p["type"])
	require.NotContains(t, p["detail"], "127.0.0.1", "the driver error stays in the log")
	require.Contains(t, b.logs.String(), `"code":"unavailable"`)

	// Release the lock: the orphaned transaction never sent COMMIT, so its
	// backend rolls back when it finds its client gone.
	_, err = locker.Exec(ctx, `ROLLBACK`)
	require.NoError(t, err)
	eventually(t, "the orphaned backend to end", func() bool {
		var n int
		require.NoError(t, b.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND query LIKE '%INSERT INTO key_list%' AND pid <> pg_backend_pid()`, dbName).Scan(&n))
		return n == 0
	})
	require.Equal(t, counts, b.tableCounts(t), "nothing half-written")
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM idempotency_keys WHERE idem_key = 'outage-1'`))
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM events WHERE data->>'name' = 'during-the-outage'`))
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM key_list WHERE name = 'during-the-outage'`))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM key_list WHERE key_id = $1`, before.ID))
}

func TestPostgresDownEveryDatabaseEndpointAnswers503Not500(t *testing.T) {
	t.Parallel()
	b := setup(t, viaProxy(), withConns(4))
	k := b.generate(t, "acme", "k", nil)
	// Warm a few connections, so that both dead pooled connections and new
	// dials are exercised.
	for i := 0; i < 4; i++ {
		b.list(t, "acme", "")
	}
	b.proxy.cut()

	cases := []struct {
		name, method, path, body string
		headers                  []header
	}{
		{"generate", http.MethodPost, keysPath("acme"), genBody("x", nil), []header{bearer}},
		{"generate idempotent", http.MethodPost, keysPath("acme"), genBody("x", nil), []header{bearer, hdr("Idempotency-Key", "i")}},
		{"list", http.MethodGet, keysPath("acme"), "", []header{bearer}},
		{"get", http.MethodGet, keyPath("acme", k.ID), "", []header{bearer}},
		{"revoke", http.MethodPost, keyPath("acme", k.ID) + "/revoke", "", []header{bearer}},
		{"key events", http.MethodGet, keyPath("acme", k.ID) + "/events", "", []header{bearer}},
		{"org events", http.MethodGet, "/v1/orgs/acme/events", "", []header{bearer}},
		{"verify", http.MethodGet, "/v1/verify", "", []header{hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", "acme")}},
		{"verify POST", http.MethodPost, "/v1/verify", "", []header{hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", "acme")}},
	}
	// Twice: the first round meets the pool's dead connections, the second
	// round dials the refusing proxy.
	for round := 1; round <= 2; round++ {
		for _, tc := range cases {
			res := b.do(t, tc.method, tc.path, tc.body, tc.headers...)
			p := requireProblem(t, res, http.StatusServiceUnavailable)
			require.Equal(t, "1", res.Header.Get("Retry-After"), "%s round %d", tc.name, round)
			require.Equal(t, "the database is unavailable; retry later", p["detail"])
		}
	}
	require.NotContains(t, b.logs.String(), `"code":"internal"`)

	res := b.do(t, http.MethodGet, "/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, res.Status)
	require.Equal(t, map[string]any{"ready": false, "checks": map[string]any{"database": "unavailable"}}, fields(t, res))

	// Liveness does not depend on the database.
	requireJSON(t, b.do(t, http.MethodGet, "/healthz", ""), http.StatusOK)
	// Malformed input is still refused before any lookup.
	p := requireProblem(t, b.verify(t, "kl_garbage", "acme"), http.StatusUnauthorized)
	require.Equal(t, "malformed", p["reason"])
	require.Equal(t, 1, b.eventCount(t, "", domain.TypeKeyGenerated))
}
