package service_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/gateway/gatewaytest"
	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/internal/natstest"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/internal/service"
)

const token = "service-test-admin-token-0123456789"

// instance is one service process: its own pool and NATS connection, on a
// database and a stream shared with the other instances of the test.
type instance struct {
	svc  *service.Service
	http *httptest.Server
	stop func()
}

func start(t *testing.T, dbURL, natsURL string, cfg notices.Config, stale time.Duration) *instance {
	t.Helper()
	pool := pgtest.PoolFor(t, dbURL, 8)
	nc := natstest.Connect(t, natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	svc, err := service.New(pool, service.Options{AdminToken: token, KeyPrefix: "kl", Logger: slog.New(slog.DiscardHandler),
		NATS: nc, Notices: cfg, StaleAfter: stale})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { svc.Run(ctx) })
	srv := httptest.NewServer(svc.Handler)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
			srv.Close()
		}
	}
	t.Cleanup(stop)
	return &instance{svc: svc, http: srv, stop: stop}
}

func (i *instance) waitCurrent(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool { return i.svc.Follower.CurrentWithin(time.Second) }, 20*time.Second, 10*time.Millisecond,
		"the service's follower never became current")
}

func (i *instance) call(t *testing.T, method, path, body string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(method, i.http.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Less(t, resp.StatusCode, 300)
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

// verify returns "" for a valid key, else the reason of the refusal.
func (i *instance) verify(t *testing.T, key, org string, noCache bool) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, i.http.URL+"/v1/verify", nil)
	req.Header.Set("X-Api-Key", key)
	req.Header.Set("X-Organization-Id", org)
	if noCache {
		req.Header.Set("Cache-Control", "no-cache")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out struct {
		Reason string `json:"reason"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	return out.Reason
}

func newStream(t *testing.T) notices.Config {
	t.Helper()
	suffix := natstest.Random(10)
	cfg := notices.Config{Prefix: "t" + suffix, Stream: "T" + suffix}.WithDefaults()
	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), cfg.Stream) })
	return cfg
}

// TestVerifyCacheFollowsRevocationsAcrossInstances is DESIGN 6.7 and issue
// 3 item 5 with two instances: the instance that revoked answers revoked at
// once (read-your-writes), the other one as soon as the notice reaches it,
// though both had the key cached as valid.
func TestVerifyCacheFollowsRevocationsAcrossInstances(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	cfg := newStream(t)
	a := start(t, db, natstest.URL(), cfg, 5*time.Second)
	b := start(t, db, natstest.URL(), cfg, 5*time.Second)
	a.waitCurrent(t)
	b.waitCurrent(t)

	key := a.call(t, http.MethodPost, "/v1/orgs/acme/keys", `{"name":"k"}`)
	secret, id := key["key"].(string), key["id"].(string)
	for range 3 {
		require.Empty(t, a.verify(t, secret, "acme", false))
		require.Empty(t, b.verify(t, secret, "acme", false))
	}
	pa, _ := a.svc.Cache.Len()
	pb, _ := b.svc.Cache.Len()
	require.Equal(t, 1, pa, "instance a cached the key")
	require.Equal(t, 1, pb, "instance b cached the key")

	a.call(t, http.MethodPost, "/v1/orgs/acme/keys/"+id+"/revoke", `{}`)
	require.Equal(t, "revoked", a.verify(t, secret, "acme", false), "read-your-writes on the revoking instance")
	require.Eventually(t, func() bool { return b.verify(t, secret, "acme", false) == "revoked" }, 10*time.Second, 5*time.Millisecond,
		"the other instance follows the notice")
	_, tb := b.svc.Cache.Len()
	require.Equal(t, 1, tb, "instance b holds a tombstone")
}

// TestVerifyCacheTrustsPositivesOnlyWhileCurrent cuts one instance off
// NATS: within its stale-after bound it may still answer a revoked key valid
// from its cache (the bound is the promise), but Cache-Control: no-cache asks
// Postgres, and past the bound every answer does.
func TestVerifyCacheTrustsPositivesOnlyWhileCurrent(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	cfg := newStream(t)
	a := start(t, db, natstest.URL(), cfg, 5*time.Second)
	proxy := gatewaytest.NewProxy(t, gatewaytest.HostPort(natstest.URL()))
	const stale = 2 * time.Second
	b := start(t, db, proxy.URL("nats"), cfg, stale)
	a.waitCurrent(t)
	b.waitCurrent(t)

	key := a.call(t, http.MethodPost, "/v1/orgs/acme/keys", `{"name":"k"}`)
	secret, id := key["key"].(string), key["id"].(string)
	require.Empty(t, b.verify(t, secret, "acme", false))

	proxy.Cut()
	cut := time.Now()
	a.call(t, http.MethodPost, "/v1/orgs/acme/keys/"+id+"/revoke", `{}`)
	require.Equal(t, "revoked", b.verify(t, secret, "acme", true), "no-cache asks Postgres")
	if time.Since(cut) < stale/2 {
		require.Empty(t, b.verify(t, secret, "acme", false), "within the bound, the cached positive still answers")
	}
	require.Eventually(t, func() bool { return b.verify(t, secret, "acme", false) == "revoked" }, 3*stale, 20*time.Millisecond,
		"past the bound the cached positive is not trusted")
	require.GreaterOrEqual(t, time.Since(cut), stale/2, "it was not trusted too early either")
}
