package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/gateway/gatewaytest"
	"github.com/keyledger/keyledger/internal/natstest"
)

var errEnded = errors.New("the gateway command returned")

func TestGatewayHelpExplainsEveryFlag(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := gateway(context.Background(), []string{"--help"}, env(nil), &out, &out)
	require.ErrorIs(t, err, flag.ErrHelp)
	for _, want := range []string{
		"-listen", "KEYLEDGER_GATEWAY_LISTEN", "-upstream", "KEYLEDGER_GATEWAY_UPSTREAM",
		"-service", "KEYLEDGER_SERVICE_URL", "-nats", "KEYLEDGER_NATS_URL",
		"-keep-key-header", "KEYLEDGER_GATEWAY_KEEP_KEY_HEADER", "-stale-after", "KEYLEDGER_GATEWAY_STALE_AFTER",
		"-subject-prefix", "KEYLEDGER_NATS_SUBJECT_PREFIX", "-stream", "KEYLEDGER_NATS_STREAM",
		"-key-prefix", "KEYLEDGER_KEY_PREFIX", "-metrics-listen", "KEYLEDGER_GATEWAY_METRICS_LISTEN",
		"-log-level", "-shutdown-timeout", "fails closed",
	} {
		require.Contains(t, out.String(), want)
	}
}

func TestGatewayWrongSettingsFailAtStartNamingEachVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := gateway(context.Background(), nil, env(map[string]string{
		"KEYLEDGER_GATEWAY_LISTEN":          "nowhere",
		"KEYLEDGER_GATEWAY_UPSTREAM":        "ftp://files",
		"KEYLEDGER_SERVICE_URL":             "127.0.0.1:8080",
		"KEYLEDGER_NATS_URL":                "nats://127.0.0.1:4222,http://x",
		"KEYLEDGER_GATEWAY_KEEP_KEY_HEADER": "perhaps",
		"KEYLEDGER_GATEWAY_STALE_AFTER":     "-5s",
		"KEYLEDGER_NATS_SUBJECT_PREFIX":     "a..b",
		"KEYLEDGER_NATS_STREAM":             "bad.stream",
		"KEYLEDGER_KEY_PREFIX":              "Bad_Prefix",
		"KEYLEDGER_GATEWAY_METRICS_LISTEN":  "example.com:9090",
		"KEYLEDGER_LOG_LEVEL":               "loud",
	}), &out, &out)
	require.Error(t, err)
	for _, name := range []string{"KEYLEDGER_GATEWAY_LISTEN", "KEYLEDGER_GATEWAY_UPSTREAM", "KEYLEDGER_SERVICE_URL",
		"KEYLEDGER_NATS_URL", "KEYLEDGER_GATEWAY_KEEP_KEY_HEADER", "KEYLEDGER_GATEWAY_STALE_AFTER",
		"KEYLEDGER_NATS_SUBJECT_PREFIX", "KEYLEDGER_NATS_STREAM", "KEYLEDGER_KEY_PREFIX",
		"KEYLEDGER_GATEWAY_METRICS_LISTEN", "KEYLEDGER_LOG_LEVEL"} {
		require.Contains(t, err.Error(), name)
	}
	require.Empty(t, out.String(), "nothing is served or printed on a bad configuration")
}

func TestGatewayRequiresUpstreamServiceAndNATS(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := gateway(context.Background(), nil, env(nil), &out, &out)
	require.Error(t, err)
	for _, name := range []string{"KEYLEDGER_GATEWAY_UPSTREAM", "KEYLEDGER_SERVICE_URL", "KEYLEDGER_NATS_URL"} {
		require.Contains(t, err.Error(), name+": required")
	}
}

func TestGatewayFlagsOverrideTheirVariables(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	c, err := parseGatewayConfig([]string{"--upstream", "http://127.0.0.1:9000", "--stale-after", "2s", "--keep-key-header"},
		env(map[string]string{
			"KEYLEDGER_GATEWAY_UPSTREAM":    "ftp://wrong",
			"KEYLEDGER_SERVICE_URL":         "http://127.0.0.1:8080",
			"KEYLEDGER_NATS_URL":            "nats://127.0.0.1:4222",
			"KEYLEDGER_GATEWAY_STALE_AFTER": "nonsense",
		}), &out)
	require.NoError(t, err)
	require.Equal(t, 2*time.Second, c.StaleAfter)
	require.True(t, c.KeepKeyHeader)
	require.Equal(t, "http://127.0.0.1:9000", c.Upstream)

	c, err = parseGatewayConfig(nil, env(map[string]string{
		"KEYLEDGER_GATEWAY_UPSTREAM":        "http://127.0.0.1:9000",
		"KEYLEDGER_SERVICE_URL":             "http://127.0.0.1:8080",
		"KEYLEDGER_NATS_URL":                "nats://127.0.0.1:4222",
		"KEYLEDGER_GATEWAY_KEEP_KEY_HEADER": "true",
	}), &out)
	require.NoError(t, err)
	require.True(t, c.KeepKeyHeader)
	require.Equal(t, 5*time.Second, c.StaleAfter)
}

// TestGatewayProxiesValidKeysAndRefusesARevokedOne runs the command against
// the real service and a notices stream that the test fills as the relay
// would.
func TestGatewayProxiesValidKeysAndRefusesARevokedOne(t *testing.T) {
	t.Parallel()
	e := gatewaytest.New(t)
	e.StartHeartbeats(100 * time.Millisecond)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "key "+r.Header.Get("X-Keyledger-Key-Id")+" api-key-header="+r.Header.Get("X-Api-Key"))
	}))
	t.Cleanup(upstream.Close)

	ctx, cancel := context.WithCancel(context.Background())
	stderr := &lockedBuffer{}
	pr, pw := io.Pipe()
	var gwErr error
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		err := gateway(ctx, []string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
			"--upstream", upstream.URL, "--service", e.Service.URL, "--nats", natstest.URL(),
			"--subject-prefix", e.Notices.Prefix, "--stream", e.Notices.Stream},
			env(map[string]string{"KEYLEDGER_LOG_LEVEL": "warn"}), pw, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "gateway returned: %v\n", err)
		}
		pw.CloseWithError(errEnded)
		gwErr = err
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("gateway log:\n%s", stderr.String())
		}
		cancel()
		select {
		case <-stopped:
		case <-time.After(60 * time.Second):
		}
	})
	lines := newLineWaiter(pr)
	metricsLine := lines.waitFor(t, "metrics on ")
	metrics := strings.TrimSpace(metricsLine[strings.Index(metricsLine, "http://"):])
	proxyLine := lines.waitFor(t, "proxying ")
	base := strings.Fields(proxyLine[strings.Index(proxyLine, "http://"):])[0]
	go func() { _, _ = io.Copy(io.Discard, pr) }()

	get := func(key, org string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/hello", nil)
		req.Header.Set("X-Api-Key", key)
		req.Header.Set("X-Organization-Id", org)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	id, secret := e.Generate("acme", "prod", nil)
	status, body := get(secret, "acme")
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "key "+id+" api-key-header=", body)
	status, body = get(secret, "globex")
	require.Equal(t, http.StatusUnauthorized, status)
	require.Contains(t, body, `"reason":"invalid"`)

	e.Publish(e.Revoke("acme", id))
	waitUntil(t, func() bool {
		status, body = get(secret, "acme")
		return status == http.StatusUnauthorized
	})
	require.Contains(t, body, `"reason":"revoked"`)

	waitUntil(t, func() bool {
		resp, err := http.Get(strings.TrimSuffix(metrics, "/metrics") + "/readyz")
		require.NoError(t, err)
		defer resp.Body.Close()
		var ready struct {
			Ready bool `json:"ready"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&ready))
		return ready.Ready && resp.StatusCode == http.StatusOK
	})
	resp, err := http.Get(metrics)
	require.NoError(t, err)
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"keyledger_notices_applied_total 1", "keyledger_keycache_hits_total",
		"keyledger_notices_staleness_seconds", "keyledger_notices_delay_seconds_bucket",
		`keyledger_gateway_verifications_total{result="revoked"}`, "keyledger_gateway_service_errors_total 0"} {
		require.Contains(t, string(m), want)
	}

	cancel()
	select {
	case <-stopped:
		require.NoError(t, gwErr, "a signal stops the gateway cleanly")
	case <-time.After(60 * time.Second):
		t.Fatal("the gateway did not stop")
	}
}

// TestGatewayFollowsTheRelayOfServe runs serve (embedded NATS, real relay)
// and a gateway on it: the gateway becomes current on the relay's
// heartbeats and applies its notices, and a revoked key is refused.
func TestGatewayFollowsTheRelayOfServe(t *testing.T) {
	t.Parallel()
	vars := map[string]string{
		"KEYLEDGER_DATABASE_URL":        freshDatabaseURL(t),
		"KEYLEDGER_HTTP_ADDR":           "127.0.0.1:0",
		"KEYLEDGER_DATA_DIR":            t.TempDir(),
		"KEYLEDGER_ADMIN_TOKEN":         "test-admin-token-0123456789",
		"KEYLEDGER_NATS_SUBJECT_PREFIX": "e2e" + natstest.Random(8),
		"KEYLEDGER_LOG_LEVEL":           "warn",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	start := func(name string, f func(io.Writer) error) *lineWaiter {
		pr, pw := io.Pipe()
		wg.Go(func() {
			err := f(pw)
			pw.CloseWithError(errEnded)
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
		w := newLineWaiter(pr)
		return w
	}
	serveOut := start("serve", func(w io.Writer) error { return run(ctx, []string{"serve"}, env(vars), w, io.Discard) })
	natsLine := serveOut.waitFor(t, "embedded NATS server on ")
	natsURL := strings.Fields(natsLine[strings.Index(natsLine, "nats://"):])[0]
	serving := serveOut.waitFor(t, "serving on ")
	service := strings.TrimSpace(serving[strings.Index(serving, "http://"):])
	go func() { _, _ = io.Copy(io.Discard, pipeOf(serveOut)) }()

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(upstream.Close)
	vars["KEYLEDGER_NATS_URL"] = natsURL
	gwOut := start("gateway", func(w io.Writer) error {
		return gateway(ctx, []string{"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
			"--upstream", upstream.URL, "--service", service}, env(vars), w, io.Discard)
	})
	metricsLine := gwOut.waitFor(t, "metrics on ")
	metrics := strings.TrimSpace(metricsLine[strings.Index(metricsLine, "http://"):])
	proxyLine := gwOut.waitFor(t, "proxying ")
	base := strings.Fields(proxyLine[strings.Index(proxyLine, "http://"):])[0]
	go func() { _, _ = io.Copy(io.Discard, pipeOf(gwOut)) }()

	proxied := func(key string) int {
		req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
		req.Header.Set("X-Api-Key", key)
		req.Header.Set("X-Organization-Id", "acme")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	scrape := func() string {
		resp, err := http.Get(metrics)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	ready := func() bool {
		resp, err := http.Get(strings.TrimSuffix(metrics, "/metrics") + "/readyz")
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}

	key := adminCall(t, service, vars["KEYLEDGER_ADMIN_TOKEN"], http.MethodPost, "/v1/orgs/acme/keys", `{"name":"e2e"}`)
	require.Equal(t, http.StatusOK, proxied(key["key"].(string)))
	waitUntil(t, ready) // current on the relay's heartbeats
	adminCall(t, service, vars["KEYLEDGER_ADMIN_TOKEN"], http.MethodPost, "/v1/orgs/acme/keys/"+key["id"].(string)+"/revoke", `{"reason":"leaked"}`)
	waitUntil(t, func() bool { return strings.Contains(scrape(), "keyledger_notices_applied_total 2") })
	require.Equal(t, http.StatusUnauthorized, proxied(key["key"].(string)))
	waitUntil(t, ready)
}

// pipeOf returns the reader a lineWaiter drains, so that a test can keep
// draining it after the lines it waited for.
func pipeOf(w *lineWaiter) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		l, ok := <-w.lines
		if !ok {
			return 0, io.EOF
		}
		return copy(p, l+"\n"), nil
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
