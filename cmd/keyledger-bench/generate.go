package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/keyledger/keyledger/domain"
)

const generateTarget = 0.5

// generate measures GenerateKey through HTTP against the raw Postgres floor:
// single-row INSERT transactions of a ~300-byte JSONB row.
func (b *bench) generate(ctx context.Context, w io.Writer) (result, error) {
	cfg := b.cfg
	fmt.Fprintf(w, "\n== generate: POST /v1/orgs/{org}/keys, %d clients, service pool %d conns; baseline: raw INSERT at %d pgx conns\n",
		cfg.generateClients, cfg.poolConns, cfg.rawConns)
	load := loadAvg()
	fmt.Fprintf(w, "  (load average %.2f at start)\n", load)
	b.scratch.checkpoint(ctx, b.progress)

	// The floor: what Postgres on this machine commits at this concurrency
	// when each transaction is a single small JSONB insert.
	rawPool, err := newPool(ctx, b.scratch.url, int32(b.cfg.rawConns))
	if err != nil {
		return result{}, err
	}
	defer rawPool.Close()
	if _, err := rawPool.Exec(ctx, "TRUNCATE bench_raw_inserts"); err != nil {
		return result{}, err
	}
	rawOrg := "bench-raw-" + b.runID
	raw := loopSide("raw INSERT 300B jsonb (pgx, commit)", cfg.rawConns, func(ctx context.Context) error {
		_, err := rawPool.Exec(ctx, `INSERT INTO bench_raw_inserts (data) VALUES ($1)`, rawRow(rawOrg))
		return err
	})

	svc, err := b.startService(ctx, b.scratch, serviceOptions{NATS: true})
	if err != nil {
		return result{}, err
	}
	defer svc.close()
	genOrg := "bench-gen-" + b.runID
	gen, base := b.compare(ctx, "generate", b.scratch, httpSide(httpLoad{
		label:   "keyledger POST /keys (201)",
		clients: cfg.generateClients,
		targets: generateTargeter(svc, genOrg),
		success: http.StatusCreated,
	}), raw)
	if err := ctx.Err(); err != nil {
		return result{}, err
	}
	if _, err := rawPool.Exec(ctx, "TRUNCATE bench_raw_inserts"); err != nil {
		return result{}, err
	}

	// How many keys each transaction committed, warm-up included.
	var keys, txs int64
	if err := b.scratch.loader.QueryRow(ctx, `SELECT count(*), count(DISTINCT transaction_id) FROM events WHERE org_id = $1`,
		genOrg).Scan(&keys, &txs); err != nil {
		return result{}, err
	}

	printRun(w, gen, "req/s")
	printRun(w, base, "tx/s")
	r := measured("generate", "req/s", "ratio >= 0.5", gen, base, cfg.generateClients, cfg.duration, load)
	if txs > 0 {
		r.KeysPerTransaction = round(float64(keys)/float64(txs), 2)
		fmt.Fprintf(w, "  the service committed %d keys in %d transactions (%.2f keys per transaction)\n", keys, txs, r.KeysPerTransaction)
	}
	r.Value, r.Baseline, r.Target = round(gen.rate(), 1), round(base.rate(), 1), generateTarget
	r.Ratio = ratio(gen.rate(), base.rate())
	r.OK = r.Ratio >= generateTarget
	fmt.Fprintf(w, "  ratio %.3f (target >= %.2f): %s\n", r.Ratio, generateTarget, verdict(r.OK))
	return r, nil
}

// generateTargeter sends GenerateKey requests with realistic names, a third
// of them with an expiry.
func generateTargeter(svc *instance, org string) vegeta.Targeter {
	r := rand.New(rand.NewPCG(1, 2))
	expires := domain.FormatTime(time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second))
	bodies := make([][]byte, 1024)
	for i := range bodies {
		req := map[string]any{"name": keyName(r), "expires_at": nil}
		if i%3 == 0 {
			req["expires_at"] = expires
		}
		bodies[i], _ = json.Marshal(req)
	}
	header := http.Header{
		"Authorization": {"Bearer " + svc.Token},
		"Content-Type":  {"application/json"},
		"X-Actor":       {"bench@example.com"},
	}
	url := svc.URL + "/v1/orgs/" + org + "/keys"
	var n atomic.Uint64
	return func(t *vegeta.Target) error {
		t.Method = http.MethodPost
		t.URL = url
		t.Body = bodies[n.Add(1)%uint64(len(bodies))]
		t.Header = header // Target.Request copies it
		return nil
	}
}

// rawRow is a JSONB document of about 300 bytes shaped like a key.generated
// event: the payload size the service writes per key.
func rawRow(org string) string {
	secret := domain.NewKeySecret(domain.DefaultKeyPrefix)
	doc, _ := json.Marshal(map[string]any{
		"type":       domain.TypeKeyGenerated,
		"org_id":     org,
		"actor":      "bench@example.com",
		"key_id":     domain.NewKeyID(),
		"name":       "production-key-123",
		"key_hash":   domain.HashKey(secret).String(),
		"masked":     domain.MaskKey(secret),
		"expires_at": nil,
		"note":       strings.Repeat("x", 24),
	})
	return string(doc)
}
