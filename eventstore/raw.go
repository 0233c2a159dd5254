package eventstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/domain"
)

// RawEvent is an event as stored, its data the JSON text Postgres returns,
// not decoded: for readers that must see exactly what the table holds, such
// as the sealer, which hashes it, and the audit verifier, which hashes it
// again.
type RawEvent struct {
	Cursor        Cursor // the transaction id and position
	ID            string
	OrgID         string
	KeyID         string
	StreamVersion int64
	Type          string
	Actor         string
	OccurredAt    time.Time
	Data          []byte
}

// TailRaw is Tail with the events as stored: up to limit committed events
// after the cursor, in ledger order, below the xid8 horizon, and the cursor
// of the last one (the given cursor if there are none).
func (s *Store) TailRaw(ctx context.Context, after Cursor, limit int) ([]RawEvent, Cursor, error) {
	return s.tail(ctx, "", after, limit)
}

// tail reads up to limit committed events after the cursor, in ledger
// order, below the xid8 horizon, that also meet cond ($4 is arg, if any).
func (s *Store) tail(ctx context.Context, cond string, after Cursor, limit int, arg ...any) ([]RawEvent, Cursor, error) {
	var events []RawEvent
	err := QueryGeneric(ctx, s.pool, `SELECT `+eventColumns+` FROM events e WHERE `+cond+belowHorizon+`
		ORDER BY e.transaction_id, e.position LIMIT $3`, append([]any{strconv.FormatUint(after.Xid, 10), after.Position, limit}, arg...),
		func(rows pgx.Rows) (err error) {
			events, err = ScanRawEvents(rows)
			return err
		})
	if err != nil {
		return nil, after, fmt.Errorf("tail: %w", Unavailable(err))
	}
	if len(events) == 0 {
		return nil, after, nil
	}
	return events, events[len(events)-1].Cursor, nil
}

// QueryGeneric runs a reader's statement with its generic plan, in one
// round trip (two the first time a connection prepares it), and hands its
// rows to scan. It is for statements that have one good plan whatever their
// values, run often enough that planning each run costs as much as running
// it, such as the ledger's readers below.
//
// Readers of the ledger's end (Tail, TailRaw, OrgEvents, Behind) run
// hundreds of times a second under load, each from a cursor among the
// newest events. Postgres would plan each run afresh: the plan for the
// cursor's values is estimated cheaper than the plan for any values (few
// rows lie past the end), though both are the same index scan, and planning
// cost more than running: about 90 µs against 30 µs for a tail of 16
// events, quiet. Measured through pgx with appends going on, a tail of 16
// events took 300 to 320 µs planned each time and 180 to 200 µs with the
// generic plan. So the statement runs in an implicit transaction whose first
// statement sets plan_cache_mode for that transaction alone; the connection
// goes back to the pool as it was.
func QueryGeneric(ctx context.Context, pool *pgxpool.Pool, sql string, args []any, scan func(pgx.Rows) error) error {
	b := &pgx.Batch{}
	setLocal(b, "plan_cache_mode", "force_generic_plan")
	b.Queue(sql, args...).Query(scan)
	return pool.SendBatch(ctx, b).Close()
}

// RawEventColumns are the columns ScanRawEvents reads, in its order, from a
// query on the events table aliased e. The transaction id is read as text
// (pgx has no xid8 type) under another name than the column's: an output
// column named transaction_id would be what a bare ORDER BY transaction_id
// sorts by, in text order, where "100000" comes before "99999", and readers
// would leave ledger order (and skip events) whenever the transaction ids
// gain a digit.
const RawEventColumns = `e.position, e.transaction_id::text AS xid_text, e.id::text, e.org_id, e.key_id, e.stream_version, e.type, e.actor, e.occurred_at, e.data`

// eventColumns is RawEventColumns, as the store's own readers name it.
const eventColumns = RawEventColumns

// ScanRawEvents reads rows of RawEventColumns as stored.
func ScanRawEvents(rows pgx.Rows) ([]RawEvent, error) {
	defer rows.Close()
	var events []RawEvent
	for rows.Next() {
		var e RawEvent
		var xid string
		if err := rows.Scan(&e.Cursor.Position, &xid, &e.ID, &e.OrgID, &e.KeyID, &e.StreamVersion, &e.Type, &e.Actor, &e.OccurredAt, &e.Data); err != nil {
			return nil, err
		}
		c, err := cursorOf(xid, e.Cursor.Position)
		if err != nil {
			return nil, err
		}
		e.Cursor = c
		events = append(events, e)
	}
	return events, rows.Err()
}

// ParseXid reads a transaction id as Postgres writes an xid8.
func ParseXid(s string) (uint64, error) {
	c, err := cursorOf(s, 0)
	return c.Xid, err
}

// ScanEventRows reads rows of RawEventColumns as decoded events, for readers
// that select events with conditions of their own.
func ScanEventRows(rows pgx.Rows) ([]domain.Event, error) {
	events, _, err := scanEvents(rows)
	return events, err
}
