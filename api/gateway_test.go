package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/consumers/gateway"
	"github.com/keyledger/keyledger/consumers/gateway/gatewaytest"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/natstest"
)

// gwUpstream is the service behind the proxy: it records what it received.
type gwUpstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
}

func (u *gwUpstream) last(t *testing.T) *http.Request {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	require.NotEmpty(t, u.reqs, "the upstream got no request")
	return u.reqs[len(u.reqs)-1]
}

func (u *gwUpstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

// gwBundle is a proxy in front of an upstream, checking keys with the real
// gateway client against the real service and notices.
type gwBundle struct {
	env      *gatewaytest.Env
	client   *gateway.Client
	upstream *gwUpstream
	front    *httptest.Server
	now      *clock
}

func gwSetup(t *testing.T, o api.GatewayOptions, staleAfter time.Duration) *gwBundle {
	t.Helper()
	b := &gwBundle{env: gatewaytest.New(t), upstream: &gwUpstream{}, now: newClock()}
	b.upstream.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.upstream.mu.Lock()
		b.upstream.reqs = append(b.upstream.reqs, r.Clone(context.Background()))
		b.upstream.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "upstream says hello to "+r.URL.RequestURI())
	}))
	t.Cleanup(b.upstream.srv.Close)
	c, err := gateway.New(gateway.Config{ServiceURL: b.env.Service.URL, NATS: natstest.Connect(t, natstest.URL()),
		Notices: b.env.Notices, StaleAfter: staleAfter, Now: b.now.Now})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("gateway client stopped: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("gateway client not ready")
	}
	b.client = c
	up, err := url.Parse(b.upstream.srv.URL)
	require.NoError(t, err)
	b.front = httptest.NewServer(api.NewGatewayProxy(c, up, o))
	t.Cleanup(b.front.Close)
	return b
}

func (b *gwBundle) get(t *testing.T, path string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.front.URL+path, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

// gwProblem is the part of a problem body that must match /v1/verify's.
type gwProblem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Reason string `json:"reason"`
	Valid  *bool  `json:"valid"`
}

// requireGwRefused checks a 401 from the proxy: the reason, and the very
// body /v1/verify gives for the same headers.
func (b *gwBundle) requireRefused(t *testing.T, reason domain.Reason, headers ...string) {
	t.Helper()
	before := b.upstream.count()
	resp, body := b.get(t, "/anything", headers...)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	require.Equal(t, `APIKey realm="keyledger"`, resp.Header.Get("WWW-Authenticate"))
	var p gwProblem
	require.NoError(t, json.Unmarshal(body, &p))
	require.Equal(t, string(reason), p.Reason)
	require.NotNil(t, p.Valid)
	require.False(t, *p.Valid)
	require.Equal(t, before, b.upstream.count(), "a refused request is not forwarded")

	req, err := http.NewRequest(http.MethodGet, b.env.Service.URL+"/v1/verify", nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	sresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer sresp.Body.Close()
	var sp gwProblem
	require.NoError(t, json.NewDecoder(sresp.Body).Decode(&sp))
	require.Equal(t, sp, p, "the proxy renders a refusal exactly as /v1/verify does")
}

func TestGatewayProxy401ForEveryFailedCheckWithTheReasonOfVerify(t *testing.T) {
	t.Parallel()
	b := gwSetup(t, api.GatewayOptions{}, 0)
	b.env.StartHeartbeats(100 * time.Millisecond)
	_, secret := b.env.Generate("acme", "prod", nil)
	_, otherSecret := b.env.Generate("globex", "theirs", nil)
	revokedID, revoked := b.env.Generate("acme", "old", nil)

	b.requireRefused(t, domain.ReasonMissing)
	b.requireRefused(t, domain.ReasonMissing, "X-Api-Key", secret)
	b.requireRefused(t, domain.ReasonMissing, "X-Organization-Id", "acme")
	b.requireRefused(t, domain.ReasonMalformed, "X-Api-Key", "kl_nope", "X-Organization-Id", "acme")
	b.requireRefused(t, domain.ReasonMalformed, "X-Api-Key", secret, "X-Organization-Id", "acme corp")
	b.requireRefused(t, domain.ReasonInvalid, "X-Api-Key", domain.NewKeySecret("kl"), "X-Organization-Id", "acme")
	b.requireRefused(t, domain.ReasonInvalid, "X-Api-Key", otherSecret, "X-Organization-Id", "acme")
	// Cached, then with another organization.
	resp, _ := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b.requireRefused(t, domain.ReasonInvalid, "X-Api-Key", secret, "X-Organization-Id", "globex")

	// Revoked: the notice makes every later request 401 revoked.
	resp, _ = b.get(t, "/", "X-Api-Key", revoked, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b.env.Publish(b.env.Revoke("acme", revokedID))
	require.Eventually(t, func() bool { return b.client.AppliedCount() == 1 }, 60*time.Second, 10*time.Millisecond)
	calls := b.env.VerifyCalls()
	b.requireRefused(t, domain.ReasonRevoked, "X-Api-Key", revoked, "X-Organization-Id", "acme")
	require.Equal(t, calls+1, b.env.VerifyCalls(), "only requireRefused's own /v1/verify call: the proxy answered from the tombstone")
}

func TestGatewayProxy401ExpiredOnTheGatewaysClock(t *testing.T) {
	t.Parallel()
	b := gwSetup(t, api.GatewayOptions{}, 0)
	b.env.StartHeartbeats(100 * time.Millisecond)
	require.Eventually(t, b.client.Current, 60*time.Second, 10*time.Millisecond)
	expires := time.Now().Add(48 * time.Hour)
	_, secret := b.env.Generate("acme", "soon", &expires)
	resp, _ := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b.now.Advance(72 * time.Hour)
	resp, body := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Contains(t, string(body), `"reason":"expired"`)
}

func TestGatewayProxyForwardsAValidKeyWithItsIDAndWithoutTheKey(t *testing.T) {
	t.Parallel()
	b := gwSetup(t, api.GatewayOptions{}, 0)
	id, secret := b.env.Generate("acme", "prod", nil)
	resp, body := b.get(t, "/v2/orders?limit=5", "X-Api-Key", secret, "X-Organization-Id", "acme",
		"X-Keyledger-Key-Id", "key_spoofed", "X-Custom", "kept")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Equal(t, "upstream says hello to /v2/orders?limit=5", string(body))
	got := b.upstream.last(t)
	require.Equal(t, []string{id}, got.Header.Values("X-Keyledger-Key-Id"), "the client's own value is replaced")
	require.Empty(t, got.Header.Values("X-Api-Key"), "the key is not forwarded")
	require.Equal(t, "acme", got.Header.Get("X-Organization-Id"))
	require.Equal(t, "kept", got.Header.Get("X-Custom"))
	require.NotEmpty(t, got.Header.Get("X-Forwarded-For"))
}

func TestGatewayProxyKeepsTheKeyHeaderWhenTold(t *testing.T) {
	t.Parallel()
	b := gwSetup(t, api.GatewayOptions{KeepKeyHeader: true}, 0)
	id, secret := b.env.Generate("acme", "prod", nil)
	resp, _ := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got := b.upstream.last(t)
	require.Equal(t, secret, got.Header.Get("X-Api-Key"))
	require.Equal(t, id, got.Header.Get("X-Keyledger-Key-Id"))
}

func TestGatewayProxy401WhenAHeaderIsRepeated(t *testing.T) {
	t.Parallel()
	b := gwSetup(t, api.GatewayOptions{}, 0)
	_, secret := b.env.Generate("acme", "prod", nil)
	_, theirs := b.env.Generate("globex", "theirs", nil)
	for _, h := range [][]string{
		{"X-Api-Key", secret, "X-Api-Key", theirs, "X-Organization-Id", "acme"},
		{"X-Api-Key", secret, "X-Organization-Id", "acme", "X-Organization-Id", "globex"},
	} {
		before := b.upstream.count()
		resp, body := b.get(t, "/", h...)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		require.Contains(t, string(body), `"reason":"malformed"`)
		require.Equal(t, before, b.upstream.count())
	}
}

func TestGatewayProxy503WhenTheKeyCannotBeChecked(t *testing.T) {
	t.Parallel()
	// No heartbeat ever: the client is never current, so it must ask the
	// service, which is gone.
	b := gwSetup(t, api.GatewayOptions{}, time.Second)
	_, secret := b.env.Generate("acme", "prod", nil)
	resp, _ := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b.env.Service.Close()
	resp, body := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	var p gwProblem
	require.NoError(t, json.Unmarshal(body, &p))
	require.Equal(t, http.StatusServiceUnavailable, p.Status)
	require.NotContains(t, string(body), secret)
	require.NotContains(t, string(body), b.env.Service.URL, "the cause stays in the logs")
	require.Equal(t, 1, b.upstream.count(), "only the first request was forwarded")
}

func TestGatewayProxy502WhenTheUpstreamIsDown(t *testing.T) {
	t.Parallel()
	b := gwSetup(t, api.GatewayOptions{}, 0)
	_, secret := b.env.Generate("acme", "prod", nil)
	b.upstream.srv.Close()
	resp, body := b.get(t, "/", "X-Api-Key", secret, "X-Organization-Id", "acme")
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, "%s", body)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
}
