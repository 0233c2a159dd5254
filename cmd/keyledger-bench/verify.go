package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

const (
	verifyTarget      = 0.35
	verifyTargetP99ms = 5.0
	// verifyOrgs is how many organizations the verify keys are spread over.
	verifyOrgs = 10
)

// verifyKey is a loaded key a gateway would present.
type verifyKey struct{ org, secret string }

// verify measures /v1/verify with --verify-keys keys in the lookup view
// against a trivial chi handler served and loaded the same way.
func (b *bench) verify(ctx context.Context, w io.Writer) (result, error) {
	cfg := b.cfg
	fmt.Fprintf(w, "\n== verify: GET /v1/verify, %d connections, %s keys in the lookup view, service pool %d conns; baseline: trivial chi JSON handler\n",
		cfg.verifyClients, thousands(int64(cfg.verifyKeys)), cfg.poolConns)
	load := loadAvg()
	fmt.Fprintf(w, "  (load average %.2f at start)\n", load)

	keys, err := b.loadVerifyKeys(ctx)
	if err != nil {
		return result{}, err
	}
	b.scratch.checkpoint(ctx, b.progress)

	svc, err := b.startService(ctx, b.scratch)
	if err != nil {
		return result{}, err
	}
	defer svc.close()
	trivial, err := serve(trivialHandler())
	if err != nil {
		return result{}, err
	}
	defer trivial.close()
	got, base := b.compare(ctx, "verify", b.scratch, httpSide(httpLoad{
		label:   "keyledger GET /v1/verify (200)",
		clients: cfg.verifyClients,
		targets: verifyTargeter(svc.URL, keys),
		success: http.StatusOK,
	}), httpSide(httpLoad{
		label:   "trivial chi handler (200)",
		clients: cfg.verifyClients,
		targets: verifyTargeter(trivial.URL, keys),
		success: http.StatusOK,
	}))
	if err := ctx.Err(); err != nil {
		return result{}, err
	}

	printRun(w, got, "req/s")
	printRun(w, base, "req/s")
	r := measured("verify", "req/s", "ratio >= 0.35 and p99 < 5 ms", got, base, cfg.verifyClients, cfg.duration, load)
	r.Value, r.Baseline, r.Target, r.TargetP99ms = round(got.rate(), 1), round(base.rate(), 1), verifyTarget, verifyTargetP99ms
	r.Ratio = ratio(got.rate(), base.rate())
	ratioOK := r.Ratio >= verifyTarget
	p99OK := r.P99ms < verifyTargetP99ms && got.ok > 0
	r.OK = ratioOK && p99OK
	fmt.Fprintf(w, "  ratio %.3f (target >= %.2f): %s; p99 %.3f ms (target < %.0f ms): %s\n",
		r.Ratio, verifyTarget, verdict(ratioOK), r.P99ms, verifyTargetP99ms, verdict(p99OK))
	return r, nil
}

// loadVerifyKeys bulk-loads fresh keys for this run, spread over a few
// organizations, none revoked or expired, and returns them with their
// plaintexts (kept in memory only).
func (b *bench) loadVerifyKeys(ctx context.Context) ([]verifyKey, error) {
	n := b.cfg.verifyKeys
	keys := make([]verifyKey, n)
	now := time.Now()
	far := now.Add(365 * 24 * time.Hour)
	start := time.Now()
	err := b.importKeys(ctx, b.scratch, "verify", n, func(i int) keySpec {
		s := keySpec{
			org:     "bench-verify-" + b.runID + "-" + strconv.Itoa(i%verifyOrgs),
			name:    "gateway-key-" + strconv.Itoa(i),
			created: now.Add(-time.Duration(n-i) * time.Second),
		}
		if i%2 == 0 {
			s.expires = &far
		}
		return s
	}, func(i int, k newKey) {
		keys[i] = verifyKey{org: k.events[0].OrgID, secret: k.secret}
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(b.progress, "verify: %s keys loaded in %s\n", thousands(int64(n)), time.Since(start).Round(100*time.Millisecond))
	if _, err := b.scratch.loader.Exec(ctx, "ANALYZE key_lookup"); err != nil {
		return nil, err
	}
	return keys, nil
}

// verifyTargeter presents a random loaded key with its organization on each
// request, as a gateway does.
func verifyTargeter(base string, keys []verifyKey) vegeta.Targeter {
	url := base + "/v1/verify"
	return func(t *vegeta.Target) error {
		k := keys[rand.IntN(len(keys))]
		t.Method = http.MethodGet
		t.URL = url
		t.Header = http.Header{"X-Api-Key": {k.secret}, "X-Organization-Id": {k.org}}
		return nil
	}
}

// trivialBody is about the size of a /v1/verify answer.
var trivialBody = []byte(`{"valid":true,"key_id":"key_0123456789abcdefghij","org_id":"bench-verify","name":"gateway-key-1","status":"active","expires_at":null}` + "\n")

// trivialHandler is the baseline of verify: chi routing and a small JSON
// body, nothing else.
func trivialHandler() http.Handler {
	r := chi.NewRouter()
	r.Get("/v1/verify", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(trivialBody)
	})
	return r
}
