package eventstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

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
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE `+belowHorizon+`
		ORDER BY events.transaction_id, events.position LIMIT $3`, strconv.FormatUint(after.Xid, 10), after.Position, limit)
	if err != nil {
		return nil, after, fmt.Errorf("tail: %w", Unavailable(err))
	}
	events, err := ScanRawEvents(rows)
	if err != nil {
		return nil, after, fmt.Errorf("tail: %w", Unavailable(err))
	}
	if len(events) == 0 {
		return nil, after, nil
	}
	return events, events[len(events)-1].Cursor, nil
}

// RawEventColumns are the columns ScanRawEvents reads, in its order, from a
// query on the events table aliased e.
const RawEventColumns = `e.position, e.transaction_id::text AS xid_text, e.id::text, e.org_id, e.key_id, e.stream_version, e.type, e.actor, e.occurred_at, e.data`

// ScanRawEvents reads rows of eventColumns (or RawEventColumns) as stored.
func ScanRawEvents(rows pgx.Rows) ([]RawEvent, error) {
	defer rows.Close()
	var events []RawEvent
	for rows.Next() {
		var e RawEvent
		var xid string
		if err := rows.Scan(&e.Cursor.Position, &xid, &e.ID, &e.OrgID, &e.KeyID, &e.StreamVersion, &e.Type, &e.Actor, &e.OccurredAt, &e.Data); err != nil {
			return nil, err
		}
		x, err := strconv.ParseUint(xid, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("transaction id %q: %w", xid, err)
		}
		e.Cursor.Xid = x
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
