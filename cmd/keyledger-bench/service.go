package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/service"
)

// instance is the keyledger service under test, built and served in this
// process the way cmd/keyledger/serve.go builds and serves it: with NATS, so
// that it runs the relay and /v1/verify answers from the cache that the
// notices keep current.
type instance struct {
	URL   string
	Token string
	svc   *service.Service
	pool  *pgxpool.Pool
	nc    *nats.Conn
	srv   *server
	stop  context.CancelFunc // ends svc.Run
	done  chan struct{}      // closed when svc.Run has returned
	once  sync.Once
}

// serviceOptions are what a scenario's service runs besides the API.
type serviceOptions struct {
	NATS    bool
	Signer  note.Signer
	SealLag func(time.Duration)
}

// startService opens a pool of --pool-conns connections on db, serves the
// API on 127.0.0.1:0 and runs the service's background work until close.
// With o.NATS (every scenario that needsNATS), it connects to the run's
// NATS, so that it runs the relay and its notices follower as served;
// without (list, seal), the service answers from Postgres alone, and no
// relay publishes the data set's events into the run's stream. With
// o.Signer it seals, as serve does, and reports each seal lag to o.SealLag.
func (b *bench) startService(ctx context.Context, db *database, o serviceOptions) (*instance, error) {
	pool, err := newPool(ctx, db.url, int32(b.cfg.poolConns))
	if err != nil {
		return nil, err
	}
	var nc *nats.Conn
	var cfg notices.Config
	if o.NATS {
		nc, err = notices.Connect(b.nats.url, "keyledger-bench-service", slog.New(slog.NewTextHandler(b.progress, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			pool.Close()
			return nil, err
		}
		cfg = b.nats.notices
	}
	token := service.NewAdminToken()
	// As serve.go, with a JSON logger at info level writing to io.Discard, so
	// that each request still pays for its log line.
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s := &instance{Token: token, pool: pool, nc: nc, done: make(chan struct{})}
	s.svc, err = service.New(pool, service.Options{AdminToken: token, KeyPrefix: domain.DefaultKeyPrefix, Logger: log,
		NATS: nc, Notices: cfg, Signer: o.Signer, SealLag: o.SealLag})
	if err == nil {
		s.srv, err = serve(s.svc.Handler)
	}
	if err != nil {
		s.closeConns()
		return nil, err
	}
	s.URL = s.srv.URL
	runCtx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go func() {
		defer close(s.done)
		s.svc.Run(runCtx)
	}()
	return s, nil
}

// waitServiceCurrent waits until the service's notices follower is current: until
// then /v1/verify does not trust its cached positives and asks Postgres.
func (b *bench) waitServiceCurrent(ctx context.Context, s *instance) error {
	f := s.svc.Follower
	return b.waitCurrent(ctx, "the service's notices follower", func() bool { return f.CurrentWithin(currentBound) }, f.AppliedCount)
}

// currentBound is how recently a follower must have been known current for
// the bench to start measuring: the relay's heartbeat comes every second.
const currentBound = 2 * time.Second

// close stops the server, the background work and the connections; it may
// be called twice.
func (s *instance) close() {
	s.once.Do(func() {
		s.srv.close()
		s.stop()
		<-s.done
		s.closeConns()
	})
}

// closeConns closes the NATS connection, if any, and the pool.
func (s *instance) closeConns() {
	if s.nc != nil {
		s.nc.Close()
	}
	s.pool.Close()
}

// server is an http.Server on a loopback port of its own.
type server struct {
	URL  string
	srv  *http.Server
	done chan error
}

// serve serves h on 127.0.0.1:0 with serve.go's server settings.
func serve(h http.Handler) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{
		URL:  "http://" + ln.Addr().String(),
		srv:  service.NewHTTPServer(h, slog.New(slog.DiscardHandler)),
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

func (s *server) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	<-s.done // http.ErrServerClosed, or the error that stopped it earlier
}
