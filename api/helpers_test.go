package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/projections"
)

const (
	adminToken = "test-admin-token-0123456789"
	keyPrefix  = "kl"
)

// bundle is one running service on a database of its own.
type bundle struct {
	srv   *httptest.Server
	db    *pgxpool.Pool // a direct pool on the test database, for assertions
	dbURL string
	clock *clock
	logs  *syncBuffer
	proxy *proxy // set when the service reaches Postgres through a proxy
	// sealer seals the ledger when a test calls seal; verifier checks its
	// checkpoints.
	sealer   *sealer.Sealer
	verifier note.Verifier
}

// config tunes setup.
type config struct {
	conns      int32
	viaProxy   bool
	extraReady map[string]api.Check
}

type option func(*config)

// withConns sizes the service's pool.
func withConns(n int32) option { return func(c *config) { c.conns = n } }

// viaProxy puts a TCP proxy between the service's pool and Postgres, so that a
// test can cut the database away.
func viaProxy() option { return func(c *config) { c.viaProxy = true } }

// withReadyCheck adds a readiness check next to the database one.
func withReadyCheck(name string, check api.Check) option {
	return func(c *config) {
		if c.extraReady == nil {
			c.extraReady = map[string]api.Check{}
		}
		c.extraReady[name] = check
	}
}

// setup builds the real stack (Postgres event store with inline views, the
// views reader, the ledger and the API) on a fresh database, served by
// httptest.
func setup(t *testing.T, opts ...option) *bundle {
	t.Helper()
	cfg := config{conns: 8}
	for _, o := range opts {
		o(&cfg)
	}
	b := &bundle{clock: newClock(), logs: &syncBuffer{}}
	b.dbURL = pgtest.NewDatabase(t)
	pool := pgtest.PoolFor(t, b.dbURL, cfg.conns)
	b.db = pool
	if cfg.viaProxy {
		b.db = pgtest.PoolFor(t, b.dbURL, 2)
		b.proxy = newProxy(t, b.dbURL)
		pool = pgtest.PoolFor(t, b.proxy.url(b.dbURL), cfg.conns)
	}
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	reg := prometheus.NewRegistry()
	require.NoError(t, store.Register(reg))
	views := projections.NewViews(pool)
	ready := map[string]api.Check{"database": pool.Ping}
	for name, check := range cfg.extraReady {
		ready[name] = check
	}
	skey, vkey, err := audit.GenerateKey("keyledger.test/log")
	require.NoError(t, err)
	signer, err := audit.NewSigner(skey)
	require.NoError(t, err)
	b.verifier, err = audit.NewVerifier(vkey)
	require.NoError(t, err)
	b.sealer, err = sealer.New(store, sealer.Options{Signer: signer})
	require.NoError(t, err)
	auditLog := sealer.NewLog(pool)
	server := api.New(api.Deps{
		Commands:   &domain.Ledger{Store: store, KeyPrefix: keyPrefix, Now: b.clock.Now},
		Keys:       views,
		Lookup:     views,
		Events:     sealer.SealedEvents{Store: store, Log: auditLog},
		Audit:      auditLog,
		AdminToken: adminToken,
		KeyPrefix:  keyPrefix,
		Now:        b.clock.Now,
		Logger:     slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registry:   reg,
		Ready:      ready,
	})
	b.srv = httptest.NewServer(server)
	t.Cleanup(b.srv.Close)
	return b
}

// clock is the service's controllable time. It starts at the real time, so
// that the database's own now() (idempotency windows) agrees with it.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now().UTC().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer is the log sink: slog writes from request goroutines while the
// test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// response is a fully read HTTP response.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// header pairs a request header name with its value.
type header struct{ name, value string }

func hdr(name, value string) header { return header{name, value} }

// bearer is the admin token header.
var bearer = hdr("Authorization", "Bearer "+adminToken)

// send makes one request; it does not fail the test, so goroutines can use it.
// body is sent as is; an empty string sends no body.
func (b *bundle) send(method, path, body string, headers ...header) (*response, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.srv.URL+path, r)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		req.Header.Set(h.name, h.value)
	}
	res, err := b.srv.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	return &response{Status: res.StatusCode, Header: res.Header, Body: data}, nil
}

// do is send that fails the test on a transport error.
func (b *bundle) do(t testing.TB, method, path, body string, headers ...header) *response {
	t.Helper()
	res, err := b.send(method, path, body, headers...)
	require.NoError(t, err)
	return res
}

// admin is do with the admin token.
func (b *bundle) admin(t testing.TB, method, path, body string, headers ...header) *response {
	t.Helper()
	return b.do(t, method, path, body, append([]header{bearer}, headers...)...)
}

// keyBody is a key as the API returns it.
type keyBody struct {
	ID        string  `json:"id"`
	OrgID     string  `json:"org_id"`
	Name      string  `json:"name"`
	Key       string  `json:"key"`
	Masked    string  `json:"masked"`
	Status    string  `json:"status"`
	CreatedAt string  `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
	RevokedAt *string `json:"revoked_at"`
}

type listBody struct {
	Keys       []keyBody `json:"keys"`
	NextCursor *string   `json:"next_cursor"`
}

type eventBody struct {
	ID            string         `json:"id"`
	Type          string         `json:"type"`
	OrgID         string         `json:"org_id"`
	KeyID         string         `json:"key_id"`
	StreamVersion int64          `json:"stream_version"`
	OccurredAt    string         `json:"occurred_at"`
	Actor         string         `json:"actor"`
	Data          map[string]any `json:"data"`
	Position      int64          `json:"position"`
	Seq           *int64         `json:"seq"`
	Hash          string         `json:"hash"`
}

type eventsBody struct {
	Events []eventBody `json:"events"`
	Next   string      `json:"next"`
}

type verifyBody struct {
	Valid     bool    `json:"valid"`
	KeyID     string  `json:"key_id"`
	OrgID     string  `json:"org_id"`
	Name      string  `json:"name"`
	Status    string  `json:"status"`
	ExpiresAt *string `json:"expires_at"`
}

// decode reads a JSON body into a T, failing on unknown fields so that a new
// field in a response is a conscious change.
func decode[T any](t testing.TB, res *response) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(res.Body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&v), "body: %s", res.Body)
	return v
}

// fields reads a JSON object body as a map.
func fields(t testing.TB, res *response) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(res.Body, &m), "body: %s", res.Body)
	return m
}

// requireJSON checks a success response's status and content type.
func requireJSON(t testing.TB, res *response, status int) {
	t.Helper()
	require.Equal(t, status, res.Status, "body: %s", res.Body)
	require.Equal(t, "application/json", res.Header.Get("Content-Type"))
}

// requireProblem checks an RFC 9457 problem response and returns its fields.
func requireProblem(t testing.TB, res *response, status int) map[string]any {
	t.Helper()
	require.Equal(t, status, res.Status, "body: %s", res.Body)
	require.Equal(t, "application/problem+json", res.Header.Get("Content-Type"))
	p := fields(t, res)
	require.Equal(t, float64(status), p["status"])
	require.Equal(t, http.StatusText(status), p["title"])
	require.NotEmpty(t, p["type"])
	require.NotEmpty(t, p["detail"])
	require.NotEmpty(t, p["request_id"])
	return p
}

// requireDetail checks a problem's status and that its detail mentions want.
func requireDetail(t testing.TB, res *response, status int, want string) {
	t.Helper()
	p := requireProblem(t, res, status)
	require.Contains(t, strings.ToLower(p["detail"].(string)), strings.ToLower(want))
}

func keysPath(org string) string { return "/v1/orgs/" + url.PathEscape(org) + "/keys" }

func keyPath(org, id string) string { return keysPath(org) + "/" + url.PathEscape(id) }

// genBody is a generate request body.
func genBody(name string, expires *time.Time) string {
	m := map[string]any{"name": name, "expires_at": nil}
	if expires != nil {
		m["expires_at"] = expires.UTC().Format(time.RFC3339)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// generate issues a key and requires 201.
func (b *bundle) generate(t testing.TB, org, name string, expires *time.Time, headers ...header) keyBody {
	t.Helper()
	res := b.admin(t, http.MethodPost, keysPath(org), genBody(name, expires), headers...)
	requireJSON(t, res, http.StatusCreated)
	k := decode[keyBody](t, res)
	require.NotEmpty(t, k.Key)
	return k
}

// list lists keys with a raw query string and requires 200.
func (b *bundle) list(t testing.TB, org, query string) listBody {
	t.Helper()
	path := keysPath(org)
	if query != "" {
		path += "?" + query
	}
	res := b.admin(t, http.MethodGet, path, "")
	requireJSON(t, res, http.StatusOK)
	return decode[listBody](t, res)
}

// revoke revokes a key and requires 200.
func (b *bundle) revoke(t testing.TB, org, id string, headers ...header) keyBody {
	t.Helper()
	res := b.admin(t, http.MethodPost, keyPath(org, id)+"/revoke", `{"reason":"test"}`, headers...)
	requireJSON(t, res, http.StatusOK)
	return decode[keyBody](t, res)
}

// verify calls GET /v1/verify with the gateway headers.
func (b *bundle) verify(t testing.TB, key, org string) *response {
	t.Helper()
	return b.do(t, http.MethodGet, "/v1/verify", "", hdr("X-Api-Key", key), hdr("X-Organization-Id", org))
}

// keyEvents reads a key's history and requires 200.
func (b *bundle) keyEvents(t testing.TB, org, id string) []eventBody {
	t.Helper()
	res := b.admin(t, http.MethodGet, keyPath(org, id)+"/events", "")
	requireJSON(t, res, http.StatusOK)
	return decode[eventsBody](t, res).Events
}

// count runs a count query on the test database.
func (b *bundle) count(t testing.TB, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.db.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// eventCount counts the stored events of an organization ("" for all) of
// one type ("" for every type).
func (b *bundle) eventCount(t testing.TB, org, eventType string) int {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM events WHERE ($1 = '' OR org_id = $1) AND ($2 = '' OR type = $2)`,
		org, eventType)
}

// tableRows returns every row of every table of the test database as text.
func (b *bundle) tableRows(t testing.TB) map[string][]string {
	t.Helper()
	ctx := context.Background()
	tables, err := b.db.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(tables, pgx.RowTo[string])
	require.NoError(t, err)
	require.Contains(t, names, "events")
	out := map[string][]string{}
	for _, name := range names {
		rows, err := b.db.Query(ctx, fmt.Sprintf(`SELECT t::text FROM %s t`, pgx.Identifier{name}.Sanitize()))
		require.NoError(t, err)
		out[name], err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
	}
	return out
}

// eventually retries check until it reports true, or fails the test after
// 15 seconds.
func eventually(t testing.TB, what string, check func() bool) {
	t.Helper()
	poll(t, 15*time.Second, what, check, func() string { return "" })
}

// awaitLedger waits for a read of the audit log to show what the test wrote.
// The audit log shows an event only once every transaction that was open
// when it committed has finished, in the whole Postgres cluster (the xid8
// horizon), so a long transaction in any database, of another test or a
// benchmark, holds it back; on timeout the oldest one is named.
func (b *bundle) awaitLedger(t testing.TB, what string, check func() bool) {
	t.Helper()
	poll(t, 60*time.Second, what, check, func() string {
		var info string
		_ = b.db.QueryRow(context.Background(), `SELECT format('pid %s in database %s, open for %s: %s',
			pid, datname, now() - xact_start, left(query, 80)) FROM pg_stat_activity
			WHERE backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1`).Scan(&info)
		return "; the oldest open transaction in the cluster is " + info
	})
}

func poll(t testing.TB, timeout time.Duration, what string, check func() bool, diagnose func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		if check() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s%s", timeout, what, diagnose())
		}
		time.Sleep(wait)
	}
}

func ptr[T any](v T) *T { return &v }

// seal seals every committed event and signs a checkpoint; it returns the
// tree size.
func (b *bundle) seal(t testing.TB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := b.sealer.CatchUp(ctx)
	require.NoError(t, err)
	return n
}

// shared names a case that runs on a service shared with other cases.
type shared struct {
	name string
	run  func(t *testing.T, b *bundle, org string)
}

// runShared runs each case as a parallel subtest on one service, each in an
// organization of its own named after the case, so that one database serves
// many cases. Cases that move the clock need a service of their own.
func runShared(t *testing.T, b *bundle, cases ...shared) {
	t.Helper()
	orgs := map[string]bool{}
	for _, c := range cases {
		org := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
				return r
			}
			return '-'
		}, c.name)
		if len(org) > 48 {
			org = org[:48]
		}
		require.False(t, orgs[org], "two cases would share organization %s", org)
		orgs[org] = true
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, b, org)
		})
	}
}
