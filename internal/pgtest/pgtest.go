// Package pgtest gives each test a database of its own on the real Postgres
// named by KEYLEDGER_TEST_DATABASE_URL (default: the local server with trust
// auth), migrated and dropped when the test ends. Tests can then run in
// parallel and re-run on a dirty machine.
//
// A migrated template database is made once per schema; each test's database
// is a copy of it, which is much faster than migrating.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/migrations"
)

// DefaultURL is used when KEYLEDGER_TEST_DATABASE_URL is not set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

const startHint = "is Postgres running? start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (or run .ci/run)"

// URL returns the server URL tests connect to.
func URL() string {
	if u := os.Getenv("KEYLEDGER_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// template returns a migrated database to copy, named after the migrations'
// content so that test binaries share it across runs. It is built under a
// temporary name and renamed when complete, so no test copies a half-migrated
// template.
func template() (string, error) {
	templateOnce.Do(func() {
		templateName, templateErr = buildTemplate()
	})
	return templateName, templateErr
}

func buildTemplate() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := "keyledger_tmpl_" + migrationsDigest()
	admin, err := adminConn(ctx)
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)
	if databaseExists(ctx, admin, name) {
		return name, nil
	}
	building := name + "_" + randomSuffix()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", err
	}
	url, err := urlFor(building)
	if err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return "", err
	}
	err = eventstore.Migrate(ctx, pool)
	pool.Close()
	if err == nil {
		_, err = admin.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+name)
		if err != nil && databaseExists(ctx, admin, name) { // another process won the race
			err = nil
		}
	}
	if _, dropErr := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+building+" WITH (FORCE)"); err == nil && dropErr != nil {
		err = dropErr
	}
	return name, err
}

func databaseExists(ctx context.Context, conn *pgx.Conn, name string) bool {
	var ok bool
	_ = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok)
	return ok
}

// migrationsDigest names the schema the migrations build.
func migrationsDigest() string {
	h := sha256.New()
	_ = fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := migrations.FS.ReadFile(path)
		h.Write([]byte(path))
		h.Write(b)
		return err
	})
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// URLFor returns the test server URL with another database name.
func urlFor(name string) (string, error) {
	cfg, err := pgx.ParseConfig(URL())
	if err != nil {
		return "", fmt.Errorf("KEYLEDGER_TEST_DATABASE_URL: %w", err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name), nil
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewDatabase creates a migrated database for t, dropped when t ends, and
// returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	tmpl, err := template()
	if err != nil {
		t.Fatalf("pgtest: prepare template database: %v\n%s", err, startHint)
	}
	name := "keyledger_test_" + randomSuffix()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := adminConn(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v\n%s", err, startHint)
	}
	defer admin.Close(ctx)
	// CREATE DATABASE ... TEMPLATE fails while another session copies the
	// same template; retry briefly.
	for attempt := 0; ; attempt++ {
		_, err = admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tmpl))
		if err == nil || attempt == 50 {
			break
		}
		time.Sleep(time.Duration(20+attempt*10) * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := adminConn(ctx)
		if err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	url, err := urlFor(name)
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// NewPool creates a database for t and returns a small pool on it, closed
// when t ends.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return PoolFor(t, NewDatabase(t), 8)
}

// PoolFor opens a pool of at most maxConns connections on url, closed when t
// ends.
func PoolFor(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: %v\n%s", err, startHint)
	}
	t.Cleanup(pool.Close)
	return pool
}

func adminConn(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, URL())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", URL(), err)
	}
	return conn, nil
}
