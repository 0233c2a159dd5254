package projections

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/eventstore"
)

// The schemas a rebuild aside works in: the new views are built in
// rebuildSchema, and the live ones are moved to retiredSchema, then dropped,
// when the new ones take their place.
const (
	rebuildSchema = "keyledger_rebuild"
	retiredSchema = "keyledger_retired"
)

// viewTables are the tables Rebuild and RebuildAside make again.
var viewTables = []string{"key_list", "key_lookup"}

// rebuildLockName names the session advisory lock a RebuildAside holds from
// start to end, so that two never run at once in one database.
const rebuildLockName = "keyledger.views.rebuild"

// swapLockTimeout is how long the swap waits for the live views' locks
// before it gives up, swapping nothing.
const swapLockTimeout = 5 * time.Second

// ErrRebuildRunning is returned by RebuildAside when another one is running
// on the same database.
var ErrRebuildRunning = errors.New("another views rebuild is running on this database; wait for it to finish")

// ErrSwapBusy is returned by RebuildAside when the live views stayed locked
// by other transactions for longer than the swap waits. Nothing was swapped:
// the live views are as they were, and a new run can be started.
var ErrSwapBusy = errors.New("the live views stayed locked by other transactions; nothing was swapped, run the rebuild again")

// ErrSchemaChanged is returned by RebuildAside when a migration changed the
// views' columns while it ran; nothing was swapped, and a new run rebuilds
// them as they are now.
var ErrSchemaChanged = errors.New("the views' columns changed during the rebuild (a migration ran); nothing was swapped, run the rebuild again")

// asideOptions are the settings of a RebuildAside that tests change.
type asideOptions struct {
	batch       int           // events read and applied per step of the replay
	lockTimeout time.Duration // how long the swap waits for the views' locks
}

// RebuildAside rebuilds the list and lookup views from the log while readers
// and commands keep using the live ones, then swaps the new ones in:
//
//  0. A session advisory lock, held on a connection of its own to the end,
//     keeps a second run from starting (it fails with ErrRebuildRunning).
//  1. New, empty tables are made beside the live ones (in the schema
//     keyledger_rebuild), with the live tables' columns and keys.
//  2. One REPEATABLE READ READ ONLY transaction reads every event of its
//     snapshot, in position order (in a snapshot no event commits late), a
//     batch at a time; each batch is applied to the new tables in a short
//     transaction of its own, on another connection, with the command
//     path's projectors, replaying (their statements name the tables
//     unqualified; search_path points them at the new ones). The reading
//     transaction gets no transaction id, and no writing one lives long, so
//     the xid8 horizon the relay, the sealer and the audit log wait for is
//     never held back by the rebuild. progress is told the events replayed
//     after each batch.
//  3. The live tables' other indexes are built on the new tables.
//  4. One short transaction locks the live tables (commands that append wait
//     for it; readers too, for its duration; it waits for them at most 5 s,
//     then fails with ErrSwapBusy, swapping nothing), applies the events
//     committed after the snapshot, moves the live tables out and the new
//     ones in under the same names, and drops the old ones.
//
// A command blocked by step 4 resolves the table names again when it gets
// its lock, so it writes to the new views. Statements of other sessions
// prepared on the old tables are planned again by Postgres. When the rebuild
// fails after step 1, the new tables are dropped.
func RebuildAside(ctx context.Context, pool *pgxpool.Pool, progress func(events int)) error {
	return rebuildAside(ctx, pool, asideOptions{batch: rebuildBatch, lockTimeout: swapLockTimeout}, progress)
}

func rebuildAside(ctx context.Context, pool *pgxpool.Pool, opts asideOptions, progress func(events int)) (err error) {
	var live string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&live); err != nil {
		return fmt.Errorf("rebuild: %w", eventstore.Unavailable(err))
	}
	// The lock's connection is outside the pool, like a leader's: when this
	// process dies, the session ends and the lock goes with it. The replay
	// reads through it too.
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("rebuild: %w", eventstore.Unavailable(err))
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx) // the session's end frees the lock
	}()
	var held bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, rebuildLockName).Scan(&held); err != nil {
		return fmt.Errorf("rebuild: %w", eventstore.Unavailable(err))
	}
	if !held {
		return fmt.Errorf("rebuild: %w", ErrRebuildRunning)
	}

	if err := prepareAside(ctx, pool, live); err != nil {
		return fmt.Errorf("rebuild: prepare: %w", err)
	}
	defer func() {
		if err != nil {
			dropCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_, _ = pool.Exec(dropCtx, `DROP SCHEMA IF EXISTS `+rebuildSchema+` CASCADE`)
		}
	}()
	snapshot, total, err := replayAside(ctx, conn, pool, live, opts.batch, progress)
	if err != nil {
		return fmt.Errorf("rebuild: replay: %w", err)
	}
	if err := indexAside(ctx, pool, live); err != nil {
		return fmt.Errorf("rebuild: indexes: %w", err)
	}
	if err := swapAside(ctx, pool, live, snapshot, total, opts.lockTimeout, progress); err != nil {
		return fmt.Errorf("rebuild: swap: %w", err)
	}
	return nil
}

// prepareAside makes the empty new tables, with the live tables' columns,
// defaults, generated columns, checks, and primary and unique keys (the
// projectors' ON CONFLICT needs them during the replay).
func prepareAside(ctx context.Context, pool *pgxpool.Pool, live string) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		stmts := []string{
			`DROP SCHEMA IF EXISTS ` + rebuildSchema + ` CASCADE`,
			`DROP SCHEMA IF EXISTS ` + retiredSchema + ` CASCADE`,
			`CREATE SCHEMA ` + rebuildSchema,
		}
		for _, t := range viewTables {
			stmts = append(stmts, fmt.Sprintf(`CREATE TABLE %s.%s (LIKE %s INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)`,
				rebuildSchema, t, pgx.Identifier{live, t}.Sanitize()))
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
			FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
			WHERE n.nspname = $1 AND r.relname = ANY($2) AND c.contype IN ('p', 'u')`, live, viewTables)
		if err != nil {
			return err
		}
		var keys []string
		var table, name, def string
		if _, err := pgx.ForEachRow(rows, []any{&table, &name, &def}, func() error {
			keys = append(keys, fmt.Sprintf(`ALTER TABLE %s.%s ADD CONSTRAINT %s %s`,
				rebuildSchema, unqualified(table), pgx.Identifier{name}.Sanitize(), def))
			return nil
		}); err != nil {
			return err
		}
		for _, s := range keys {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
}

func unqualified(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		return table[i+1:]
	}
	return table
}

// sameColumns fails unless the new tables have the live ones' columns, as
// they do unless a migration changed the live tables while the rebuild ran
// (the new ones were made like the tables before it): swapped in, they would
// lack what the code of the new schema reads.
func sameColumns(ctx context.Context, tx pgx.Tx, live string) error {
	const columns = `SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attgenerated::text, ', ' ORDER BY attname)
		FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`
	for _, t := range viewTables {
		var was, is string
		if err := tx.QueryRow(ctx, columns, pgx.Identifier{live, t}.Sanitize()).Scan(&was); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, columns, rebuildSchema+"."+t).Scan(&is); err != nil {
			return err
		}
		if was != is {
			return fmt.Errorf("%w: %s now has columns (%s), the rebuilt one (%s)", ErrSchemaChanged, t, was, is)
		}
	}
	return nil
}

// onRebuildTables points unqualified view names at the new tables for the
// rest of the transaction.
func onRebuildTables(ctx context.Context, tx pgx.Tx, live string) error {
	_, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, rebuildSchema+", "+pgx.Identifier{live}.Sanitize())
	return err
}

// replayAside reads the log of one snapshot through conn, in a
// transaction that writes nothing (and so holds no transaction id), and
// applies it to the new tables a batch at a time, each batch in a short
// transaction of its own on the pool. It returns that snapshot and the
// number of events.
func replayAside(ctx context.Context, conn *pgx.Conn, pool *pgxpool.Pool, live string, batch int, progress func(int)) (string, int, error) {
	var snapshot string
	total := 0
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(read pgx.Tx) error {
		// The first statement takes the transaction's snapshot.
		if err := read.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snapshot); err != nil {
			return err
		}
		var after int64
		for {
			events, err := eventstore.ReadAll(ctx, read, after, batch)
			if err != nil {
				return err
			}
			if len(events) == 0 {
				return nil
			}
			if err := pgx.BeginFunc(ctx, pool, func(write pgx.Tx) error {
				if err := onRebuildTables(ctx, write, live); err != nil {
					return err
				}
				return applyAll(ctx, write, events)
			}); err != nil {
				return err
			}
			after = events[len(events)-1].Position
			total += len(events)
			if progress != nil {
				progress(total)
			}
		}
	})
	return snapshot, total, err
}

// indexAside builds the live tables' other indexes, under the same names,
// on the new tables: after the replay, which is faster without them.
func indexAside(ctx context.Context, pool *pgxpool.Pool, live string) error {
	rows, err := pool.Query(ctx, `SELECT i.tablename, i.indexdef FROM pg_indexes i
		WHERE i.schemaname = $1 AND i.tablename = ANY($2)
		  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = (quote_ident(i.schemaname) || '.' || quote_ident(i.indexname))::regclass)`,
		live, viewTables)
	if err != nil {
		return err
	}
	var defs []string
	var table, def string
	if _, err := pgx.ForEachRow(rows, []any{&table, &def}, func() error {
		on := " ON " + pgx.Identifier{live, table}.Sanitize() + " "
		if !strings.Contains(def, on) {
			on = " ON " + live + "." + table + " "
		}
		if !strings.Contains(def, on) {
			return fmt.Errorf("cannot read the definition of an index of %s: %s", table, def)
		}
		defs = append(defs, strings.Replace(def, on, " ON "+rebuildSchema+"."+table+" ", 1))
		return nil
	}); err != nil {
		return err
	}
	for _, d := range defs {
		if _, err := pool.Exec(ctx, d); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
	}
	return vacuum(ctx, pool, rebuildSchema+".")
}

// vacuum runs VACUUM (ANALYZE) on the views, their names prefixed by in (a
// schema and a dot; none for the ones the search path finds): it gives the
// planner their statistics, and marks their pages all-visible, without
// which a walk of key_list_newest reads every key it passes from the table
// as well (a search's p99 under the bench's load was 25.7 ms before it,
// 13.3 ms after). It cannot run in a transaction.
func vacuum(ctx context.Context, pool *pgxpool.Pool, in string) error {
	for _, t := range viewTables {
		if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) `+in+t); err != nil {
			return err
		}
	}
	return nil
}

// lateEvents selects the events a snapshot ($1, as text) does not see, in
// position order. The bound on transaction_id, implied by the snapshot test
// (every transaction a snapshot does not see has an id at or above its
// xmin), lets the ledger-order index find them without reading the whole
// table while the swap holds the views locked.
const lateEvents = `SELECT ` + eventstore.RawEventColumns + ` FROM events e
	WHERE e.transaction_id >= pg_snapshot_xmin($1::text::pg_snapshot)
	  AND NOT pg_visible_in_snapshot(e.transaction_id, $1::text::pg_snapshot)
	ORDER BY e.position`

// swapAside applies what committed after the snapshot and puts the new
// tables in the live ones' place, in one transaction.
//
// Each lock is waited for at most lockTimeout (ErrSwapBusy then, and the
// transaction rolls back), so that a long transaction on the views does not
// queue every reader and command behind the swap.
func swapAside(ctx context.Context, pool *pgxpool.Pool, live, snapshot string, total int, lockTimeout time.Duration, progress func(int)) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`,
			strconv.FormatInt(max(lockTimeout.Milliseconds(), 1), 10)+"ms"); err != nil {
			return err
		}
		stmt := `LOCK TABLE ` + pgx.Identifier{live, viewTables[0]}.Sanitize()
		for _, t := range viewTables[1:] {
			stmt += ", " + pgx.Identifier{live, t}.Sanitize()
		}
		if _, err := tx.Exec(ctx, stmt+` IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		if err := sameColumns(ctx, tx, live); err != nil {
			return err
		}
		if err := onRebuildTables(ctx, tx, live); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, lateEvents, snapshot)
		if err != nil {
			return err
		}
		late, err := eventstore.ScanEventRows(rows)
		if err != nil {
			return err
		}
		if len(late) > 0 {
			if err := applyAll(ctx, tx, late); err != nil {
				return err
			}
			if progress != nil {
				progress(total + len(late))
			}
		}
		stmts := []string{`CREATE SCHEMA ` + retiredSchema}
		for _, t := range viewTables {
			stmts = append(stmts,
				`ALTER TABLE `+pgx.Identifier{live, t}.Sanitize()+` SET SCHEMA `+retiredSchema,
				`ALTER TABLE `+rebuildSchema+`.`+t+` SET SCHEMA `+pgx.Identifier{live}.Sanitize())
		}
		stmts = append(stmts, `DROP SCHEMA `+retiredSchema+` CASCADE`, `DROP SCHEMA `+rebuildSchema)
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
		return fmt.Errorf("%w (waited %s for the locks of %s: %v)", ErrSwapBusy, lockTimeout, strings.Join(viewTables, ", "), err)
	}
	return err
}
