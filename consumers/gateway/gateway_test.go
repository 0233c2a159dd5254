package gateway_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/gateway"
	"github.com/keyledger/keyledger/consumers/gateway/gatewaytest"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/natstest"
)

const (
	org   = "acme"
	other = "globex"
	wait  = 60 * time.Second // generous: a loaded 2-core machine under -race
	poll  = 10 * time.Millisecond
)

// clock is a settable clock for the client's expiry checks.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

type harness struct {
	env      *gatewaytest.Env
	client   *gateway.Client
	reg      *prometheus.Registry
	clock    *clock
	natsConn *nats.Conn
}

type option func(*gateway.Config, *harness)

func withStaleAfter(d time.Duration) option {
	return func(c *gateway.Config, _ *harness) { c.StaleAfter = d }
}

func withLookupTimeout(d time.Duration) option {
	return func(c *gateway.Config, _ *harness) { c.LookupTimeout = d }
}

// withNATS makes the client read notices through nc.
func withNATS(nc *nats.Conn) option {
	return func(c *gateway.Config, h *harness) { c.NATS = nc; h.natsConn = nc }
}

// setup starts the service, a stream of the test's own and a client that
// follows it, ready (subscribed) when setup returns.
func setup(t testing.TB, opts ...option) *harness {
	t.Helper()
	return setupOn(t, gatewaytest.New(t), opts...)
}

func setupOn(t testing.TB, env *gatewaytest.Env, opts ...option) *harness {
	t.Helper()
	h := &harness{env: env, reg: prometheus.NewRegistry(), clock: &clock{}}
	cfg := gateway.Config{ServiceURL: env.Service.URL, Notices: env.Notices, Registerer: h.reg, Now: h.clock.Now}
	for _, o := range opts {
		o(&cfg, h)
	}
	if cfg.NATS == nil {
		cfg.NATS = natstest.Connect(t, natstest.URL())
	}
	c, err := gateway.New(cfg)
	require.NoError(t, err)
	h.client = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		c.Close()
	})
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("client stopped before it was ready: %v", err)
	case <-time.After(wait):
		t.Fatal("client not ready")
	}
	return h
}

func (h *harness) verify(t testing.TB, key, orgID string) domain.Verification {
	t.Helper()
	v, err := h.client.Verify(context.Background(), key, orgID)
	require.NoError(t, err)
	return v
}

// requireReason checks a verification's outcome; "" means valid.
func requireReason(t testing.TB, want domain.Reason, v domain.Verification) {
	t.Helper()
	if want == "" {
		require.True(t, v.Valid(), "want valid, got %q", v.Reason)
		return
	}
	require.False(t, v.Valid())
	require.Equal(t, want, v.Reason)
}

func (h *harness) waitCurrent(t testing.TB) {
	t.Helper()
	require.Eventually(t, h.client.Current, wait, poll, "the client never became current")
}

func (h *harness) waitApplied(t testing.TB, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return h.client.AppliedCount() >= n }, wait, poll,
		"want %d notices applied, got %d", n, h.client.AppliedCount())
}

// calls runs f and returns how many /v1/verify calls the service got.
func (h *harness) calls(f func()) int64 {
	before := h.env.VerifyCalls()
	f()
	return h.env.VerifyCalls() - before
}

func TestVerifyGivesTheServicesReasonsAndAnswersRepeatsFromTheCache(t *testing.T) {
	t.Parallel()
	h := setup(t)
	h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	id, secret := h.env.Generate(org, "production-key", nil)

	// Missing and malformed input never reaches the service.
	require.Zero(t, h.calls(func() {
		requireReason(t, domain.ReasonMissing, h.verify(t, "", org))
		requireReason(t, domain.ReasonMissing, h.verify(t, secret, ""))
		requireReason(t, domain.ReasonMalformed, h.verify(t, mistype(secret), org))
		requireReason(t, domain.ReasonMalformed, h.verify(t, "sk"+secret[2:], org))
		requireReason(t, domain.ReasonMalformed, h.verify(t, secret, "acme corp"))
		requireReason(t, domain.ReasonMalformed, h.verify(t, "not a key", org))
	}))

	// A miss asks the service; the answer is cached and repeats are local.
	require.EqualValues(t, 1, h.calls(func() {
		v := h.verify(t, secret, org)
		requireReason(t, "", v)
		require.Equal(t, id, v.Key.ID)
		require.Equal(t, org, v.Key.OrgID)
		require.Equal(t, "production-key", v.Key.Name)
	}))
	require.Zero(t, h.calls(func() {
		for range 10 {
			v := h.verify(t, secret, org)
			requireReason(t, "", v)
			require.Equal(t, id, v.Key.ID)
		}
		// The cached key with another organization: the same answer as an
		// unknown key.
		requireReason(t, domain.ReasonInvalid, h.verify(t, secret, other))
	}))
	require.GreaterOrEqual(t, h.value(t, "keyledger_keycache_hits_total"), 11.0)

	// An unknown key is not cached: each attempt asks.
	unknown := domain.NewKeySecret("kl")
	require.EqualValues(t, 2, h.calls(func() {
		requireReason(t, domain.ReasonInvalid, h.verify(t, unknown, org))
		requireReason(t, domain.ReasonInvalid, h.verify(t, unknown, org))
	}))

	// Another organization's key, asked cold: invalid, from the service.
	_, otherSecret := h.env.Generate(other, "theirs", nil)
	require.EqualValues(t, 1, h.calls(func() {
		requireReason(t, domain.ReasonInvalid, h.verify(t, otherSecret, org))
	}))

	// A key revoked without a notice reaching the client: the service says
	// revoked, and the answer is kept as a tombstone.
	revokedID, revokedSecret := h.env.Generate(org, "old", nil)
	h.env.Revoke(org, revokedID)
	require.EqualValues(t, 1, h.calls(func() {
		requireReason(t, domain.ReasonRevoked, h.verify(t, revokedSecret, org))
		requireReason(t, domain.ReasonRevoked, h.verify(t, revokedSecret, org))
	}))
}

func TestExpiryIsEnforcedOnTheLocalClock(t *testing.T) {
	t.Parallel()
	h := setup(t)
	h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	expires := time.Now().Add(30 * 24 * time.Hour)
	_, secret := h.env.Generate(org, "monthly", &expires)
	requireReason(t, "", h.verify(t, secret, org))
	require.Zero(t, h.calls(func() {
		h.clock.Advance(31 * 24 * time.Hour)
		requireReason(t, domain.ReasonExpired, h.verify(t, secret, org))
	}), "a cached key expires without asking anyone")
}

func TestAnExpiredKeyIsExpiredFromTheServiceAndNotCached(t *testing.T) {
	t.Parallel()
	h := setup(t)
	expires := time.Now().Add(1500 * time.Millisecond)
	_, secret := h.env.Generate(org, "short", &expires)
	time.Sleep(time.Until(expires) + 200*time.Millisecond) // the service's own clock must pass the expiry
	require.EqualValues(t, 2, h.calls(func() {
		requireReason(t, domain.ReasonExpired, h.verify(t, secret, org))
		requireReason(t, domain.ReasonExpired, h.verify(t, secret, org))
	}))
}

func TestARevocationNoticeFailsEveryLaterVerify(t *testing.T) {
	t.Parallel()
	h := setup(t)
	h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	cachedID, cached := h.env.Generate(org, "cached", nil)
	coldID, cold := h.env.Generate(org, "never-seen", nil)
	requireReason(t, "", h.verify(t, cached, org))
	requireReason(t, "", h.verify(t, cached, org))

	h.env.Publish(h.env.Revoke(org, cachedID))
	h.env.Publish(h.env.Revoke(org, coldID))
	h.waitApplied(t, 2)

	require.Zero(t, h.calls(func() {
		for range 5 {
			requireReason(t, domain.ReasonRevoked, h.verify(t, cached, org))
			requireReason(t, domain.ReasonRevoked, h.verify(t, cold, org))
			requireReason(t, domain.ReasonInvalid, h.verify(t, cached, other))
		}
	}), "revocations are answered from the tombstones")

	// Even with the service gone and the notices stale, a tombstone holds.
	h.env.Service.Close()
	requireReason(t, domain.ReasonRevoked, h.verify(t, cached, org))
	requireReason(t, domain.ReasonRevoked, h.verify(t, cold, org))
	_, tombstones := h.client.Cache().Len()
	require.Equal(t, 2, tombstones)
	require.EqualValues(t, 2, h.value(t, "keyledger_notices_applied_total"))
	require.EqualValues(t, 2, h.value(t, "keyledger_notices_delay_seconds"), "each application's delay is observed")
}

func TestARevocationRacingAnInFlightLookupEndsRevoked(t *testing.T) {
	t.Parallel()
	h := setup(t)
	h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	id, secret := h.env.Generate(org, "racing", nil)

	// The service reads the key while it is valid, then its answer is held
	// back until the revocation notice has been applied.
	read := make(chan int, 1)
	release := make(chan struct{})
	h.env.SetVerifyHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		read <- rec.Code
		<-release
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
	type result struct {
		v   domain.Verification
		err error
	}
	res := make(chan result, 1)
	go func() {
		v, err := h.client.Verify(context.Background(), secret, org)
		res <- result{v, err}
	}()
	select {
	case code := <-read:
		require.Equal(t, http.StatusOK, code, "the lookup read the key while it was valid")
	case <-time.After(wait):
		t.Fatal("the lookup never reached the service")
	}
	h.env.Publish(h.env.Revoke(org, id))
	h.waitApplied(t, 1)
	close(release)

	r := <-res
	require.NoError(t, r.err)
	requireReason(t, domain.ReasonRevoked, r.v)
	h.env.SetVerifyHook(nil)
	require.Zero(t, h.calls(func() {
		for range 5 {
			requireReason(t, domain.ReasonRevoked, h.verify(t, secret, org))
		}
	}))
}

func TestAClientDisconnectedAndResumedMissesNoNotice(t *testing.T) {
	t.Parallel()
	env := gatewaytest.New(t)
	proxy := gatewaytest.NewProxy(t, gatewaytest.HostPort(natstest.URL()))
	nc := natstest.Connect(t, proxy.URL("nats"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	h := setupOn(t, env, withNATS(nc))
	env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)

	const n = 8
	ids, secrets := make([]string, n), make([]string, n)
	for i := range n {
		ids[i], secrets[i] = env.Generate(org, "key", nil)
		requireReason(t, "", h.verify(t, secrets[i], org))
	}
	// One revocation before the cut, applied.
	env.Publish(env.Revoke(org, ids[0]))
	h.waitApplied(t, 1)

	proxy.Cut()
	require.Eventually(t, func() bool { return nc.Status() != nats.CONNECTED }, wait, poll)
	var seqs []uint64
	for i := 1; i < n; i++ {
		seqs = append(seqs, env.Publish(env.Revoke(org, ids[i])))
	}
	require.EqualValues(t, 1, h.client.AppliedCount(), "nothing arrives while cut")
	proxy.Restore()

	h.waitApplied(t, n)
	h.waitCurrent(t)
	require.Equal(t, env.LastSeq(), seqs[len(seqs)-1])
	require.Zero(t, h.calls(func() {
		for i := range n {
			requireReason(t, domain.ReasonRevoked, h.verify(t, secrets[i], org))
		}
	}))
	// Each notice was applied once: a heartbeat later, the count is still n.
	env.Heartbeat()
	h.waitCurrent(t)
	require.EqualValues(t, n, h.client.AppliedCount())
	for i, s := range secrets {
		k, ok := h.client.Cache().Get(domain.HashKey(s))
		require.True(t, ok)
		require.NotNil(t, k.RevokedAt)
		require.Equal(t, ids[i], k.ID)
		require.EqualValues(t, 2, k.Version, "the tombstone carries the revocation's stream version")
	}
}

func TestAStaleClientRechecksWithTheServiceAndFailsClosedWithoutIt(t *testing.T) {
	t.Parallel()
	h := setup(t, withStaleAfter(time.Second))
	stop := h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	_, secret := h.env.Generate(org, "cached", nil)
	revokedID, revoked := h.env.Generate(org, "revoked", nil)
	requireReason(t, "", h.verify(t, secret, org))
	require.Zero(t, h.calls(func() { requireReason(t, "", h.verify(t, secret, org)) }))
	h.env.Publish(h.env.Revoke(org, revokedID))
	h.waitApplied(t, 1)

	// No heartbeat for longer than StaleAfter: positives are not trusted.
	stop()
	require.Eventually(t, func() bool { return !h.client.Current() }, wait, poll)
	require.Greater(t, h.value(t, "keyledger_notices_staleness_seconds"), 1.0)
	require.EqualValues(t, 1, h.calls(func() { requireReason(t, "", h.verify(t, secret, org)) }),
		"stale: the cached key is re-checked with the service")
	require.Greater(t, h.value(t, "keyledger_keycache_misses_total", "cause", "stale"), 0.0)

	// Stale and no service: refused, with an error.
	h.env.Service.Close()
	v, err := h.client.Verify(context.Background(), secret, org)
	require.ErrorIs(t, err, gateway.ErrUnavailable)
	require.Equal(t, domain.EUnavailable, domain.ErrorCode(err))
	require.False(t, v.Valid())
	require.EqualValues(t, 1, h.value(t, "keyledger_gateway_service_errors_total"))
	// A revoked key stays revoked, service or not.
	requireReason(t, domain.ReasonRevoked, h.verify(t, revoked, org))

	// Current again: the cached key is trusted again, without the service.
	h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	requireReason(t, "", h.verify(t, secret, org))
}

func TestServiceFailuresFailClosed(t *testing.T) {
	t.Parallel()
	h := setup(t, withLookupTimeout(500*time.Millisecond))
	_, secret := h.env.Generate(org, "k", nil)
	for name, hook := range map[string]gatewaytest.VerifyHook{
		"500": func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			http.Error(w, "boom", http.StatusInternalServerError)
		},
		"503": func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			http.Error(w, "busy", http.StatusServiceUnavailable)
		},
		"garbage 200": func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			_, _ = w.Write([]byte(`{"valid": false}`))
		},
		"200 for another organization": func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			_, _ = w.Write([]byte(`{"valid": true, "key_id": "key_x", "org_id": "globex", "status": "active"}`))
		},
		"unknown 401 reason": func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"reason": "sleepy"}`))
		},
		"timeout": func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			<-r.Context().Done()
		},
	} {
		h.env.SetVerifyHook(hook)
		v, err := h.client.Verify(context.Background(), secret, org)
		require.ErrorIs(t, err, gateway.ErrUnavailable, name)
		require.False(t, v.Valid(), name)
	}
	h.env.SetVerifyHook(nil)
	requireReason(t, "", h.verify(t, secret, org))
}

func TestNewRefusesABadConfigNamingEachProblem(t *testing.T) {
	t.Parallel()
	_, err := gateway.New(gateway.Config{ServiceURL: "ftp://x", KeyPrefix: "Bad", StaleAfter: -time.Second})
	require.Error(t, err)
	for _, want := range []string{"service URL", "NATS", "key prefix", "stale after"} {
		require.ErrorContains(t, err, want)
	}
}

// TestAConcurrentLoadNeverServesARevokedKey verifies under concurrency:
// once the notice is applied, no Verify says valid.
func TestAConcurrentLoadNeverServesARevokedKey(t *testing.T) {
	t.Parallel()
	h := setup(t)
	h.env.StartHeartbeats(100 * time.Millisecond)
	h.waitCurrent(t)
	id, secret := h.env.Generate(org, "busy", nil)
	requireReason(t, "", h.verify(t, secret, org))

	var applied atomic.Bool
	var wrong atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				after := applied.Load()
				v, err := h.client.Verify(context.Background(), secret, org)
				if after && (err != nil || v.Valid()) {
					wrong.Add(1)
				}
			}
		})
	}
	h.env.Publish(h.env.Revoke(org, id))
	h.waitApplied(t, 1)
	applied.Store(true)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	require.Zero(t, wrong.Load())
}

// value reads a metric of the client's registry: the sample whose labels
// include the given name-value pairs.
func (h *harness) value(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	samples:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue samples
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	t.Fatalf("metric %s %v not found", name, labels)
	return 0
}

// mistype changes the last character of a key to another base62 one.
func mistype(key string) string {
	c := byte('A')
	if key[len(key)-1] == c {
		c = 'B'
	}
	return key[:len(key)-1] + string(c)
}
