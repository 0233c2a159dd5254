package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/eventstore"
	embeddednats "github.com/keyledger/keyledger/internal/natsserver"
	"github.com/keyledger/keyledger/internal/service"
)

const serveSummary = `Runs the HTTP API: creates the database if missing, applies migrations, and
serves until SIGINT or SIGTERM, when it stops accepting connections and waits
for in-flight requests (up to --shutdown-timeout). It also runs the relay of
the ledger to NATS (the notices) and the sealer of the audit log, each while
this instance leads it (one instance among those sharing the database does),
and keeps /v1/verify's cache current from the notices. With no NATS URL it
starts an embedded NATS server and prints its URL.`

// defaultPoolConns is the pool size when the database URL sets none
// (pool_max_conns): enough for the write path's short transactions.
const defaultPoolConns = 16

func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig("serve", args, getenv, stderr, serveSummary)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel)
	service.TuneGC(getenv("GOGC") != "")

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("KEYLEDGER_DATA_DIR: %w", err)
	}
	token, generated, err := adminToken(cfg)
	if err != nil {
		return err
	}
	if generated {
		fmt.Fprintf(stdout, "keyledger: generated an admin token; it is shown once here and kept in %s\n%s\n",
			filepath.Join(cfg.DataDir, adminTokenFile), token)
	}

	signer, err := auditSigner(cfg, stdout)
	if err != nil {
		return err
	}

	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	nc, stopNATS, err := connectNATS(cfg, log, stdout)
	if err != nil {
		return err
	}
	defer stopNATS()

	svc, err := service.New(pool, service.Options{AdminToken: token, KeyPrefix: cfg.KeyPrefix, Logger: log,
		NATS: nc, Notices: notices.Config{Prefix: cfg.SubjectPrefix, Stream: cfg.Stream}, Signer: signer,
		CheckpointFile: filepath.Join(cfg.DataDir, checkpointFile)})
	if err != nil {
		return err
	}
	// The background work outlives ctx until the requests have drained, so
	// that what they commit is still relayed and sealed.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	bg.Go(func() { svc.Run(bgCtx) })
	err = listenAndServe(ctx, cfg, svc.Handler, log, stdout)
	stopBackground()
	bg.Wait()
	return err
}

// connectNATS connects to KEYLEDGER_NATS_URL or, when it is empty, starts
// an embedded NATS server keeping its files in the data directory, and
// prints its URL for gateways. stop closes the connection and the server.
func connectNATS(cfg Config, log *slog.Logger, stdout io.Writer) (nc *nats.Conn, stop func(), err error) {
	url, env := cfg.NATSURL, "KEYLEDGER_NATS_URL"
	var embedded *natsserver.Server
	if url == "" {
		embedded, err = embeddednats.Start(embeddednats.Options{Dir: cfg.DataDir, Addr: cfg.NATSListen, SyncAlways: true}, log)
		if err != nil {
			return nil, nil, fmt.Errorf("KEYLEDGER_NATS_LISTEN: %w", err)
		}
		url, env = embedded.ClientURL(), "KEYLEDGER_NATS_LISTEN"
		fmt.Fprintf(stdout, "keyledger: embedded NATS server on %s (JetStream files in %s)\n", url, filepath.Join(cfg.DataDir, "nats"))
	}
	nc, err = notices.Connect(url, "keyledger", log)
	if err != nil {
		if embedded != nil {
			embedded.Shutdown()
		}
		return nil, nil, fmt.Errorf("%s: %w", env, err)
	}
	return nc, func() {
		nc.Close()
		if embedded != nil {
			embedded.Shutdown()
			embedded.WaitForShutdown()
		}
	}, nil
}

// toolPoolConns is the pool size of the one-shot commands (audit, views,
// notices) when the database URL sets none.
const toolPoolConns = 4

// openDatabase creates the database if missing, then connects as
// connectDatabase does, with the pool serve runs with.
func openDatabase(ctx context.Context, url string) (*pgxpool.Pool, error) {
	if err := eventstore.EnsureDatabase(ctx, url); err != nil {
		return nil, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err)
	}
	return connectDatabase(ctx, url, defaultPoolConns)
}

// connectDatabase connects to an existing database with a pool of conns
// connections (unless the URL sets pool_max_conns) and applies the
// migrations it lacks; unlike openDatabase, it never creates the database.
func connectDatabase(ctx context.Context, url string, conns int32) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		pcfg.MaxConns = conns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err)
	}
	if err := eventstore.Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// listenAndServe serves until ctx ends, then drains in-flight requests.
func listenAndServe(ctx context.Context, cfg Config, h http.Handler, log *slog.Logger, stdout io.Writer) error {
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("KEYLEDGER_HTTP_ADDR: %w", err)
	}
	srv := service.NewHTTPServer(h, log)
	fmt.Fprintf(stdout, "keyledger: serving on http://%s\n", ln.Addr())
	log.Info("serving", slog.String("addr", ln.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests", slog.Duration("timeout", cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

const adminTokenFile = "admin-token"

// checkpointFile, in the data directory, keeps the last audit checkpoint this
// instance signed, outside the database: the sealer refuses to extend a tree
// that does not extend it (sealer.Options.CheckpointFile).
const checkpointFile = "audit-last-checkpoint"

// adminToken returns the configured token, or the one kept in the data
// directory, or a new one written there (generated reports that).
func adminToken(cfg Config) (token string, generated bool, err error) {
	if cfg.AdminToken != "" {
		return cfg.AdminToken, false, nil
	}
	path := filepath.Join(cfg.DataDir, adminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: read admin token: %w", err)
	}
	token = service.NewAdminToken()
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: write admin token: %w", err)
	}
	return token, true, nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}
