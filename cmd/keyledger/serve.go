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

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/service"
)

const serveSummary = `Runs the HTTP API: creates the database if missing, applies migrations, and
serves until SIGINT or SIGTERM, when it stops accepting connections and waits
for in-flight requests (up to --shutdown-timeout). It also runs the sealer of
the audit log, which seals while this instance leads (one instance among
those sharing the database does).`

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

	svc, err := service.New(pool, service.Options{AdminToken: token, KeyPrefix: cfg.KeyPrefix, Logger: log, Signer: signer})
	if err != nil {
		return err
	}
	workCtx, stopWork := context.WithCancel(ctx)
	worked := make(chan struct{})
	go func() {
		defer close(worked)
		svc.Run(workCtx)
	}()
	err = listenAndServe(ctx, cfg, svc.Handler, log, stdout)
	stopWork()
	<-worked
	return err
}

// openDatabase creates the database if missing, connects and migrates.
func openDatabase(ctx context.Context, url string) (*pgxpool.Pool, error) {
	if err := eventstore.EnsureDatabase(ctx, url); err != nil {
		return nil, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err)
	}
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		pcfg.MaxConns = defaultPoolConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
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
