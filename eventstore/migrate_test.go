package eventstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/migrations"
)

// scratchDatabaseURL returns the URL of a database that does not exist yet,
// on the test server, and drops it when t ends.
func scratchDatabaseURL(t *testing.T) (string, string) {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "keyledger_scratch_" + hex.EncodeToString(b)
	u, err := url.Parse(pgtest.URL())
	require.NoError(t, err)
	u.Path = "/" + name
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), pgtest.URL())
		if err != nil {
			t.Logf("drop %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop %s: %v", name, err)
		}
	})
	return u.String(), name
}

func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), pgtest.URL())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var ok bool
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok))
	return ok
}

func TestEnsureDatabaseCreatesAMissingDatabaseAndIsANoOpWhenItExists(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL, name := scratchDatabaseURL(t)
	require.False(t, databaseExists(t, name))

	require.NoError(t, eventstore.EnsureDatabase(ctx, dbURL))
	require.True(t, databaseExists(t, name))

	// Existing: nothing happens, and what it holds stays.
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `CREATE TABLE marker (x int)`)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, eventstore.EnsureDatabase(ctx, dbURL))
	conn, err = pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `SELECT * FROM marker`)
	require.NoError(t, err, "EnsureDatabase replaced an existing database")
}

// TestEnsureDatabaseRacingInstancesAllSucceed: several instances starting at
// once against a missing database all come up.
func TestEnsureDatabaseRacingInstancesAllSucceed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL, name := scratchDatabaseURL(t)
	const instances = 4
	errs := make([]error, instances)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = eventstore.EnsureDatabase(ctx, dbURL)
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "instance %d", i)
	}
	require.True(t, databaseExists(t, name))
}

func TestEnsureDatabaseRefusesAURLWithoutADatabase(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	require.Error(t, eventstore.EnsureDatabase(ctx, "postgres://postgres@127.0.0.1:5432/?sslmode=disable"))
	require.Error(t, eventstore.EnsureDatabase(ctx, "::not a url::"))
}

// TestMigrateIsIdempotent: migrating a fresh database builds the whole
// schema; migrating again, or from several instances at once, changes
// nothing and fails nothing.
func TestMigrateIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL, _ := scratchDatabaseURL(t)
	require.NoError(t, eventstore.EnsureDatabase(ctx, dbURL))
	pool := pgtest.PoolFor(t, dbURL, 6)

	require.NoError(t, eventstore.Migrate(ctx, pool))
	schema := schemaOf(t, pool)
	for _, table := range []string{"events", "idempotency_keys", "key_list", "key_lookup"} {
		require.Contains(t, schema, "table "+table)
	}
	require.Contains(t, schema, "trigger events_append_only")

	var applied int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(DISTINCT version_id) FROM goose_db_version WHERE version_id > 0 AND is_applied`).Scan(&applied))
	require.Equal(t, countMigrations(t), applied, "every embedded migration is applied")

	require.NoError(t, eventstore.Migrate(ctx, pool), "a second Migrate")
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = eventstore.Migrate(ctx, pool)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err, "a concurrent Migrate")
	}
	require.Equal(t, schema, schemaOf(t, pool), "migrating again changed the schema")

	// The migrated database works as a store.
	store := eventstore.New(pool)
	e := appendKey(t, store, "org-a")
	loaded, err := store.Load(ctx, "org-a", e.KeyID)
	require.NoError(t, err)
	require.Len(t, loaded, 1)
}

// TestMigrateConcurrentlyOnAFreshDatabase: instances that start together on
// an empty database serialize on goose's lock instead of failing.
func TestMigrateConcurrentlyOnAFreshDatabase(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dbURL, _ := scratchDatabaseURL(t)
	require.NoError(t, eventstore.EnsureDatabase(ctx, dbURL))
	pool := pgtest.PoolFor(t, dbURL, 8)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	start := make(chan struct{})
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = eventstore.Migrate(ctx, pool)
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "instance %d", i)
	}
	require.Contains(t, schemaOf(t, pool), "table events")
}

func TestMigrateOnATestDatabaseIsANoOp(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	before := schemaOf(t, b.pool)
	require.NoError(t, eventstore.Migrate(ctx, b.pool))
	require.Equal(t, before, schemaOf(t, b.pool))
}

// schemaOf lists the tables, columns, indexes, functions and triggers of the
// public schema, one per line, sorted.
func schemaOf(t *testing.T, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) string {
	t.Helper()
	rows, err := q.Query(context.Background(), `
		SELECT 'table ' || table_name FROM information_schema.tables WHERE table_schema = 'public'
		UNION ALL SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
			FROM information_schema.columns WHERE table_schema = 'public'
		UNION ALL SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
		UNION ALL SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = 'public'
		UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
		ORDER BY 1`)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

func countMigrations(t *testing.T) int {
	t.Helper()
	entries, err := fs.Glob(migrations.FS, "*.sql")
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	return len(entries)
}
