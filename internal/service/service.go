// Package service assembles the keyledger service from its parts: the event
// store with its inline projections, the views, the ledger, the HTTP API and
// the background workers (the sealer of the audit log).
// cmd/keyledger serves what it builds; cmd/keyledger-bench measures the very
// same thing. It reads no configuration: its callers pass every value.
package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections"
)

// GCPercent is the garbage collector's target that the service runs with
// unless GOGC is set. The live heap of a keyledger process is a few
// megabytes, so at the default of 100 a verification load collects many
// times a second, and the collections add to the latency tail: at 64
// connections on two cores, /v1/verify's p99 went from 6.3-6.6 ms to
// 5.2-5.5 ms with 400 in paired runs (BENCHMARKS.md), for a heap of tens of
// megabytes.
const GCPercent = 400

// TuneGC applies GCPercent, unless gogcSet says the operator chose GOGC.
func TuneGC(gogcSet bool) {
	if !gogcSet {
		debug.SetGCPercent(GCPercent)
	}
}

// NewAdminToken returns a fresh random admin token: 256 bits from
// crypto/rand, with a prefix that tells it from a key.
func NewAdminToken() string {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand never fails on supported platforms
	return "kla_" + base64.RawURLEncoding.EncodeToString(raw)
}

// Options are the values the service is built with.
type Options struct {
	AdminToken string
	KeyPrefix  string
	Logger     *slog.Logger
	// Signer signs the audit log's checkpoints. Without it the service runs
	// no sealer (it still serves what other instances sealed).
	Signer note.Signer
	// SealLag, if not nil, is told the seal lag of each event this process
	// seals (the benchmarks read it; operators read the metric).
	SealLag func(time.Duration)
}

// Service is the assembled service: its HTTP API and its background
// workers, sharing one event store and one metrics registry.
type Service struct {
	Handler *api.Server
	Store   *eventstore.Store
	// Sealer is nil when no signer was given.
	Sealer *sealer.Sealer
	log    *slog.Logger
}

// New builds the service on a migrated database, with its own metrics
// registry (including the Go runtime and process collectors).
func New(pool *pgxpool.Pool, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	views := projections.NewViews(pool)
	auditLog := sealer.NewLog(pool)
	svc := &Service{Store: store, log: o.Logger}
	if o.Signer != nil {
		var err error
		svc.Sealer, err = sealer.New(store, sealer.Options{Signer: o.Signer, Logger: o.Logger, Registry: reg, ObserveLag: o.SealLag})
		if err != nil {
			return nil, err
		}
	}
	svc.Handler = api.New(api.Deps{
		Commands:   &domain.Ledger{Store: store, KeyPrefix: o.KeyPrefix, Now: time.Now},
		Keys:       views,
		Lookup:     views,
		Events:     sealer.SealedEvents{Store: store, Log: auditLog},
		Audit:      auditLog,
		AdminToken: o.AdminToken,
		KeyPrefix:  o.KeyPrefix,
		Now:        time.Now,
		Logger:     o.Logger,
		Registry:   reg,
		Ready:      map[string]api.Check{"database": pool.Ping},
	})
	return svc, nil
}

// Run runs the background workers until ctx ends: the announcement of this
// process's commits to other processes, and the sealer (which seals only
// while this process leads).
func (s *Service) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Store.RunNotifier(ctx, s.log)
	}()
	if s.Sealer != nil {
		s.Sealer.Run(ctx)
	}
	<-done
}

// NewHandler builds the HTTP API alone, without background workers: what the
// benchmarks measure.
func NewHandler(pool *pgxpool.Pool, o Options) *api.Server {
	o.Signer = nil
	svc, err := New(pool, o)
	if err != nil {
		panic(err) // without a signer, nothing in New can fail
	}
	return svc.Handler
}

// NewHTTPServer wraps h in an http.Server with the timeouts keyledger serves
// with: a slow client cannot hold a connection open for ever.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
