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

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/service"
)

// instance is the keyledger service under test, built and served in this
// process the way cmd/keyledger/serve.go builds and serves it.
type instance struct {
	URL   string
	Token string
	pool  *pgxpool.Pool
	srv   *server
	once  sync.Once
}

// startService opens a pool of --pool-conns connections on db and serves
// the API on 127.0.0.1:0.
func (b *bench) startService(ctx context.Context, db *database) (*instance, error) {
	pool, err := newPool(ctx, db.url, int32(b.cfg.poolConns))
	if err != nil {
		return nil, err
	}
	token := service.NewAdminToken()
	// As serve.go, with a JSON logger at info level writing to io.Discard, so
	// that each request still pays for its log line.
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, err := service.New(pool, service.Options{AdminToken: token, KeyPrefix: domain.DefaultKeyPrefix, Logger: log})
	if err != nil {
		pool.Close()
		return nil, err
	}
	srv, err := serve(svc.Handler)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &instance{URL: srv.URL, Token: token, pool: pool, srv: srv}, nil
}

// close stops the server and closes the pool; it may be called twice.
func (s *instance) close() {
	s.once.Do(func() {
		s.srv.close()
		s.pool.Close()
	})
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
