package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/projections"
)

// benchDatabaseURL derives the bench's own database from the service's URL:
// same server and credentials, database <name>_bench (or name, if given). It
// refuses to return the service's own database.
func benchDatabaseURL(serviceURL, name string) (benchURL, benchDB string, err error) {
	if _, err := pgx.ParseConfig(serviceURL); err != nil {
		return "", "", fmt.Errorf("not a valid Postgres URL: %w", err)
	}
	u, err := url.Parse(serviceURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", "", errors.New("must be a postgres:// URL naming a database")
	}
	service := strings.Trim(u.Path, "/")
	if service == "" {
		return "", "", errors.New("must name a database, as in postgres://user@host:5432/keyledger")
	}
	if name == "" {
		name = service + "_bench"
	}
	if name == service {
		return "", "", fmt.Errorf("the bench database must not be the service's database %q", service)
	}
	if len(name) > 63 {
		return "", "", fmt.Errorf("bench database name %q is longer than Postgres's 63 bytes", name)
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), name, nil
}

// serviceDB names the database of the service's URL.
func serviceDB(serviceURL string) string {
	u, err := url.Parse(serviceURL)
	if err != nil {
		return ""
	}
	return strings.Trim(u.Path, "/")
}

// redactURL hides a password, if the URL holds one.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// bench holds what every scenario shares: the settings, a run id that makes
// this run's organization ids fresh, and the bench's two databases.
type bench struct {
	cfg      config
	progress io.Writer
	runID    string

	// data holds the list data set, kept from one run to the next; only the
	// list loader writes to it, so that it stays exactly that data set.
	data *database
	// scratch is dropped and recreated by every run that writes (every
	// scenario but list), and dropped when the run ends.
	scratch *database
	// nats is the run's NATS server and stream; nil when no scenario of the
	// run needs it.
	nats *benchNATS

	// sealDS is the seal data set in scratch, once loaded.
	sealDS *sealDataset
}

func newBench(cfg config, progress io.Writer) *bench {
	return &bench{
		cfg:      cfg,
		progress: progress,
		runID:    newRunID(),
		data:     &database{name: cfg.benchDB, url: cfg.benchURL, conns: int32(cfg.loadWorkers + 2)},
		scratch:  &database{name: cfg.scratchDB, url: cfg.scratchURL, conns: int32(cfg.loadWorkers + 2)},
	}
}

// newRunID is the time in milliseconds and a random suffix, in base 36:
// fresh for every run, also for two runs started in the same millisecond
// (which would otherwise share a stream on a NATS server).
func newRunID() string {
	return strconv.FormatInt(time.Now().UnixMilli(), 36) + strconv.FormatUint(uint64(rand.Uint32N(36*36*36*36)), 36)
}

// close closes the pools, drops the scratch database and removes the run's
// NATS stream (and the embedded server, if any).
func (b *bench) close() {
	if b.nats != nil {
		b.nats.close(b.progress)
	}
	b.data.close()
	if b.scratch.loader != nil {
		b.scratch.close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := dropDatabase(ctx, b.scratch.url); err != nil {
			fmt.Fprintf(b.progress, "bench: %v\n", err)
		}
	}
}

// database is one of the bench's own databases, migrated like the service's,
// with a small pool and a store (with the inline projectors) for loading.
type database struct {
	name, url string
	conns     int32

	loader *pgxpool.Pool     // for loading data sets and housekeeping
	store  *eventstore.Store // on loader, with the inline projectors, for Import
}

// open creates the database if missing, migrates it and opens the loader
// pool.
func (d *database) open(ctx context.Context) error {
	if err := eventstore.EnsureDatabase(ctx, d.url); err != nil {
		return err
	}
	pool, err := newPool(ctx, d.url, d.conns)
	if err != nil {
		return err
	}
	if err := eventstore.Migrate(ctx, pool); err != nil {
		pool.Close()
		return err
	}
	if _, err := pool.Exec(ctx, benchSchema); err != nil {
		pool.Close()
		return fmt.Errorf("bench tables: %w", err)
	}
	d.loader = pool
	d.store = eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	return nil
}

func (d *database) close() {
	if d.loader != nil {
		d.loader.Close()
		d.loader = nil
	}
}

// recreate drops the database and opens a new, empty one.
func (d *database) recreate(ctx context.Context) error {
	d.close()
	if err := dropDatabase(ctx, d.url); err != nil {
		return err
	}
	return d.open(ctx)
}

// clockTicks is the unit of CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// Linux).
const clockTicks = 100

// backendCPU returns the CPU time used so far by the Postgres backends
// connected to the database, read from /proc; 0 when Postgres runs elsewhere
// (or the processes cannot be read), which turns the figure off.
func (d *database) backendCPU(ctx context.Context) time.Duration {
	rows, err := d.loader.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err != nil {
		return 0
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0
	}
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/stat")
		if err != nil {
			continue
		}
		// The command name, in parentheses, may hold spaces: count fields
		// after its closing parenthesis. utime and stime are fields 14 and 15.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// checkpoint flushes dirty buffers before a measured run, so that a
// checkpoint caused by loading does not land in the middle of it. It needs
// superuser or pg_checkpoint; without them it is skipped.
func (d *database) checkpoint(ctx context.Context, progress io.Writer) {
	if _, err := d.loader.Exec(ctx, "CHECKPOINT"); err != nil {
		fmt.Fprintf(progress, "bench: CHECKPOINT skipped: %v\n", err)
	}
}

// benchSchema holds the bench's own tables, beside the service's schema:
// bench_dataset marks a data set as completely loaded, bench_raw_inserts is
// the scratch table of the raw INSERT baseline.
const benchSchema = `
CREATE TABLE IF NOT EXISTS bench_dataset (
    name       text        PRIMARY KEY,
    org_id     text        NOT NULL,
    org_keys   bigint      NOT NULL,
    total_keys bigint      NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS bench_raw_inserts (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data jsonb  NOT NULL
);`

// newPool opens a pool of at most conns connections on url.
func newPool(ctx context.Context, url string, conns int32) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = conns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to the bench database: %w", err)
	}
	return pool, nil
}

// connectAdmin connects as url says, but to the server's "postgres"
// database, which is always there, and returns the name of the database url
// names.
func connectAdmin(ctx context.Context, url string) (*pgx.Conn, string, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, "", err
	}
	name := cfg.Database
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	return conn, name, err
}

// usesTLS tells whether a connection made as url says runs over TLS.
func usesTLS(ctx context.Context, url string) (bool, error) {
	conn, _, err := connectAdmin(ctx, url)
	if err != nil {
		return false, fmt.Errorf("connect to Postgres to see whether it uses TLS: %w", err)
	}
	defer conn.Close(ctx)
	_, ok := conn.PgConn().Conn().(*tls.Conn)
	return ok, nil
}

// dropDatabase drops the database url names, from the server's "postgres"
// database, disconnecting its sessions.
func dropDatabase(ctx context.Context, url string) error {
	conn, name, err := connectAdmin(ctx, url)
	if err != nil {
		return fmt.Errorf("connect to postgres to drop %q: %w", name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %q: %w", name, err)
	}
	return nil
}
