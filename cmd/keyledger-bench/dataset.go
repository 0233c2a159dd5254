package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/domain"
)

const loaderActor = "bench-loader@example.com"

// Name vocabulary: what people call their API keys in a developer portal.
// Search terms in the list scenario match realistic fractions of it.
var (
	envs         = []string{"production", "staging", "dev", "test", "qa", "sandbox", "preview"}
	envWeights   = []int{35, 25, 15, 10, 5, 5, 5}
	services     = []string{"payments", "billing", "checkout", "search", "auth", "analytics", "mobile-app", "web", "backend", "frontend", "worker", "cron", "webhooks", "gateway", "partner-api", "internal-tools", "reporting", "ingest", "export", "notifications", "inventory", "shipping", "crm", "data-pipeline", "ml-scoring"}
	kinds        = []string{"key", "ci", "deploy", "readonly", "admin", "service", "bot", "integration", "sync", "backup"}
	roles        = []string{"backend", "frontend", "service", "worker", "server", "client"}
	freeText     = []string{"Zapier integration", "Terraform", "GitHub Actions", "local testing", "Datadog agent", "temp key for migration", "Alice laptop", "Bob laptop", "load test", "Postman", "Retool dashboard", "Segment export", "legacy import", "mobile release pipeline", "QA automation"}
	envWeightSum int
)

func init() {
	for _, w := range envWeights {
		envWeightSum += w
	}
}

func pickEnv(r *rand.Rand) string {
	n := r.IntN(envWeightSum)
	for i, w := range envWeights {
		if n < w {
			return envs[i]
		}
		n -= w
	}
	return envs[0]
}

func pick(r *rand.Rand, words []string) string { return words[r.IntN(len(words))] }

// keyName draws a realistic key name: "production-key-123", "staging-ci-45",
// "payments-backend", "billing-production", "Zapier integration".
func keyName(r *rand.Rand) string {
	n := strconv.Itoa(1 + r.IntN(500))
	switch p := r.IntN(100); {
	case p < 25:
		return pickEnv(r) + "-key-" + n
	case p < 45:
		return pickEnv(r) + "-" + pick(r, kinds) + "-" + n
	case p < 60:
		return pick(r, services) + "-" + pick(r, roles)
	case p < 75:
		return pick(r, services) + "-" + pickEnv(r)
	case p < 90:
		return pick(r, services) + "-" + pickEnv(r) + "-" + n
	default:
		return pick(r, freeText)
	}
}

// newKey is one key to load: its key.generated event and, for some, a
// key.revoked event at version 2. secret is the plaintext; it is kept in
// memory only (never written anywhere) for the verify scenario.
type newKey struct {
	secret string
	events []domain.Event
}

// keySpec says what key to build.
type keySpec struct {
	org     string
	name    string
	created time.Time
	expires *time.Time
	revoked *time.Time
}

// buildKey makes a key's events with the domain's own types and helpers.
func buildKey(s keySpec) newKey {
	secret := domain.NewKeySecret(domain.DefaultKeyPrefix)
	keyID := domain.NewKeyID()
	hash := domain.HashKey(secret).String()
	var expires *time.Time
	if s.expires != nil {
		t := domain.Truncate(*s.expires)
		expires = &t
	}
	events := []domain.Event{{
		ID:            domain.NewEventID(),
		Type:          domain.TypeKeyGenerated,
		OrgID:         s.org,
		KeyID:         keyID,
		StreamVersion: 1,
		OccurredAt:    domain.Truncate(s.created),
		Actor:         loaderActor,
		Data: domain.KeyGenerated{
			KeyID:     keyID,
			Name:      s.name,
			KeyHash:   hash,
			Masked:    domain.MaskKey(secret),
			ExpiresAt: expires,
		},
	}}
	if s.revoked != nil {
		events = append(events, domain.Event{
			ID:            domain.NewEventID(),
			Type:          domain.TypeKeyRevoked,
			OrgID:         s.org,
			KeyID:         keyID,
			StreamVersion: 2,
			OccurredAt:    domain.Truncate(*s.revoked),
			Actor:         loaderActor,
			Data:          domain.KeyRevoked{KeyID: keyID, KeyHash: hash, Reason: "rotated"},
		})
	}
	return newKey{secret: secret, events: events}
}

// importKeys loads total keys into db through Store.Import, in transactions of about
// --batch events, --load-workers at a time. spec(i) describes key i; keep,
// if set, receives each key (in order) with its plaintext. Progress goes to
// stderr every 100,000 keys.
func (b *bench) importKeys(ctx context.Context, db *database, label string, total int, spec func(i int) keySpec, keep func(i int, k newKey)) error {
	type batch struct{ events []domain.Event }
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan batch, b.cfg.loadWorkers)
	var (
		loaded   atomic.Int64
		reported atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	start := time.Now()
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	for range b.cfg.loadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for bt := range batches {
				if _, err := db.store.Import(ctx, bt.events); err != nil {
					fail(err)
					continue
				}
				keys := int64(0)
				for _, e := range bt.events {
					if e.StreamVersion == 1 {
						keys++
					}
				}
				n := loaded.Add(keys)
				for {
					last := reported.Load()
					next := (last/100000 + 1) * 100000
					if n < next && n < int64(total) {
						break
					}
					if reported.CompareAndSwap(last, n) {
						el := time.Since(start)
						fmt.Fprintf(b.progress, "%s: loaded %s / %s keys (%s, %s keys/s)\n", label,
							thousands(n), thousands(int64(total)), el.Round(100*time.Millisecond), thousands(int64(float64(n)/el.Seconds())))
						break
					}
				}
			}
		}()
	}
	// A batch holds its keys' key.generated events first and their
	// key.revoked events after them: each stream stays in version order, and
	// the projectors, which issue one statement per run of events of one
	// type, issue two instead of one per key.
	var generated, later []domain.Event
	for i := 0; i < total && ctx.Err() == nil; i++ {
		k := buildKey(spec(i))
		if keep != nil {
			keep(i, k)
		}
		generated = append(generated, k.events[0])
		later = append(later, k.events[1:]...)
		if len(generated)+len(later) >= b.cfg.batch || i == total-1 {
			select {
			case batches <- batch{append(generated, later...)}:
			case <-ctx.Done():
			}
			generated, later = nil, nil
		}
	}
	close(batches)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// analyze brings the views' statistics and visibility maps to the state
// autovacuum keeps them in on a live system, after a bulk load.
func (b *bench) analyze(ctx context.Context, db *database, label string) error {
	start := time.Now()
	if _, err := db.loader.Exec(ctx, "VACUUM (ANALYZE) events, key_list, key_lookup"); err != nil {
		return fmt.Errorf("vacuum analyze: %w", err)
	}
	fmt.Fprintf(b.progress, "%s: VACUUM (ANALYZE) done in %s\n", label, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// thousands formats n with comma separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3)
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
