// Package service assembles the keyledger service from its parts: the event
// store with its inline projections, the views, the ledger, the HTTP API and
// the background workers (the relay of notices, the verification cache's
// follower, the sealer of the audit log).
// cmd/keyledger serves what it builds; cmd/keyledger-bench measures the very
// same thing. It reads no configuration: its callers pass every value.
package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/api"
	"github.com/keyledger/keyledger/consumers/keycache"
	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/consumers/relay"
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
	// NATS, if set, is the connection notices go out on: the service then
	// runs a relay candidate. Without it the service runs on Postgres
	// alone.
	NATS    *nats.Conn
	Notices notices.Config
	// Relay tunes the relay; its Notices, Logger and Registerer are set
	// from the above.
	Relay relay.Config
	// StaleAfter is how long /v1/verify trusts its cached positives after
	// the notices were last known current (default 5 s); past it, it asks
	// Postgres.
	StaleAfter time.Duration
	// Signer signs the audit log's checkpoints. Without it the service runs
	// no sealer (it still serves what other instances sealed).
	Signer note.Signer
	// CheckpointFile is where the sealer keeps the last checkpoint it
	// signed, outside the database (sealer.Options.CheckpointFile); empty:
	// nowhere.
	CheckpointFile string
	// SealLag, if not nil, is told the seal lag of each event this process
	// seals (the benchmarks read it; operators read the metric).
	SealLag func(time.Duration)
}

// DefaultStaleAfter is the service's default Options.StaleAfter.
const DefaultStaleAfter = 5 * time.Second

// Service is one keyledger instance: its HTTP API and the background work
// that Run does.
type Service struct {
	Handler *api.Server
	Store   *eventstore.Store
	Relay   *relay.Relay // nil without NATS
	// Follower applies the notices to the verification cache; nil
	// without NATS.
	Follower *notices.Follower
	// Cache is /v1/verify's cache; nil without NATS.
	Cache *keycache.Cache
	// Sealer is nil when no signer was given.
	Sealer *sealer.Sealer
	log    *slog.Logger
}

// New builds the service on a migrated database, with its own metrics
// registry (including the Go runtime and process collectors).
func New(pool *pgxpool.Pool, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Notices = o.Notices.WithDefaults()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	if err := store.Register(reg); err != nil {
		return nil, err
	}
	views := projections.NewViews(pool)
	ready := map[string]api.Check{"database": pool.Ping}
	auditLog := sealer.NewLog(pool)
	svc := &Service{Store: store, log: o.Logger}
	if o.Signer != nil {
		var err error
		svc.Sealer, err = sealer.New(store, sealer.Options{Signer: o.Signer, CheckpointFile: o.CheckpointFile,
			Logger: o.Logger, Registry: reg, ObserveLag: o.SealLag})
		if err != nil {
			return nil, err
		}
	}
	var commands api.Commands = &domain.Ledger{Store: store, KeyPrefix: o.KeyPrefix, Now: time.Now}
	var lookup domain.KeyLookup = views
	if o.NATS != nil {
		if err := svc.followNotices(o, reg, views); err != nil {
			return nil, err
		}
		lookup = keycache.Lookup{Cache: svc.Cache, Authority: views, Ready: svc.Follower.Started()}
		commands = tombstoning{Commands: commands, cache: svc.Cache}
		rc := o.Relay
		rc.Notices, rc.Logger, rc.Registerer = o.Notices, o.Logger, reg
		r, err := relay.New(store, o.NATS, rc)
		if err != nil {
			return nil, err
		}
		svc.Relay = r
		ready["nats"] = natsReady(o.NATS)
	}
	svc.Handler = api.New(api.Deps{
		Commands:   commands,
		Keys:       views,
		Lookup:     lookup,
		Authority:  views,
		Events:     sealer.SealedEvents{Store: store, Log: auditLog},
		Audit:      auditLog,
		AdminToken: o.AdminToken,
		KeyPrefix:  o.KeyPrefix,
		Now:        time.Now,
		Logger:     o.Logger,
		Registry:   reg,
		Ready:      ready,
	})
	return svc, nil
}

// Run does the service's background work until ctx ends: it announces
// commits to other instances, competes to seal the audit log (with a
// signer) and, with NATS, competes to relay and follows the notices.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.Store.RunNotifier(ctx, s.log) })
	if s.Sealer != nil {
		wg.Go(func() { s.Sealer.Run(ctx) })
	}
	if s.Relay != nil {
		wg.Go(func() { s.Relay.Run(ctx) })
	}
	if s.Follower != nil {
		wg.Go(func() {
			if err := s.Follower.Run(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("notices: the verification cache does not follow them; /v1/verify asks Postgres", "err", err)
			}
		})
	}
	wg.Wait()
}

// followNotices builds /v1/verify's cache, kept current by the notices:
// another instance's revocation reaches it within the propagation bound,
// and while the notices are not known current it asks Postgres.
func (s *Service) followNotices(o Options, reg prometheus.Registerer, views domain.KeyLookup) error {
	stale := o.StaleAfter
	if stale <= 0 {
		stale = DefaultStaleAfter
	}
	var f *notices.Follower
	cache, err := keycache.New(func() bool { return f.CurrentWithin(stale) }, keycache.Options{Registerer: reg})
	if err != nil {
		return err
	}
	f, err = notices.NewFollower(o.NATS, o.Notices, cache, notices.FollowerOptions{Logger: o.Logger, Registerer: reg})
	if err != nil {
		return err
	}
	s.Cache, s.Follower = cache, f
	return nil
}

// tombstoning makes read-your-writes hold for /v1/verify with a cache: once
// RevokeKey returns, this instance's cache holds the key's tombstone,
// without waiting for the notice.
type tombstoning struct {
	api.Commands
	cache *keycache.Cache
}

func (t tombstoning) RevokeKey(ctx context.Context, cmd domain.RevokeKey) (*domain.Key, error) {
	k, err := t.Commands.RevokeKey(ctx, cmd)
	if err == nil && k != nil && k.RevokedAt != nil {
		t.cache.Fill(k.Hash, k)
	}
	return k, err
}

func natsReady(nc *nats.Conn) api.Check {
	return func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("NATS connection is %s", st)
		}
		return nil
	}
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

// NewHandler builds the HTTP API alone, without NATS or a sealer, for
// callers that want only the API.
func NewHandler(pool *pgxpool.Pool, o Options) *api.Server {
	o.NATS, o.Signer = nil, nil
	svc, err := New(pool, o)
	if err != nil { // without NATS or a signer, nothing in New can fail
		panic(err)
	}
	return svc.Handler
}
