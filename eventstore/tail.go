package eventstore

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyledger/keyledger/domain"
)

// Cursor is a place in ledger order: the transaction id and position of the
// last event read. The zero Cursor is the start of the ledger.
type Cursor struct {
	Xid      uint64
	Position int64
}

func cursorOf(xid string, position int64) (Cursor, error) {
	x, err := strconv.ParseUint(xid, 10, 64)
	if err != nil {
		return Cursor{}, fmt.Errorf("transaction id %q: %w", xid, err)
	}
	return Cursor{Xid: x, Position: position}, nil
}

// String encodes the cursor as an opaque token for clients.
func (c Cursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%d.%d", c.Xid, c.Position)))
}

// ParseCursor reads a token made by Cursor.String.
func ParseCursor(s string) (Cursor, error) {
	bad := domain.Errorf(domain.EInvalid, "the cursor is not one this service returned")
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, bad
	}
	xid, pos, ok := strings.Cut(string(b), ".")
	if !ok {
		return Cursor{}, bad
	}
	c, err := cursorOf(xid, 0)
	if err != nil {
		return Cursor{}, bad
	}
	c.Position, err = strconv.ParseInt(pos, 10, 64)
	if err != nil || c.Position < 0 {
		return Cursor{}, bad
	}
	return c, nil
}

// belowHorizon keeps a reader to transactions that have all finished, in
// ledger order. $1 and $2 are the cursor.
const belowHorizon = `(transaction_id, position) > ($1::text::xid8, $2)
	AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())`

// Tail returns up to limit events after the cursor, in ledger order, and the
// cursor of the last one (the given cursor if there are none). Calling it
// again with that cursor never skips an event, however late it commits.
func (s *Store) Tail(ctx context.Context, after Cursor, limit int) ([]domain.Event, Cursor, error) {
	return decodeTail(s.tail(ctx, "", after, limit))
}

// Behind tells how far a reader at after is behind the ledger: how many
// committed events lie after the cursor, below the horizon or not yet
// (counted up to limit), and when the first of them occurred (the zero time
// if none). When it says none, the reader has read everything committed
// before the call.
func (s *Store) Behind(ctx context.Context, after Cursor, limit int) (n int, oldest time.Time, err error) {
	var first *time.Time
	err = QueryGeneric(ctx, s.pool, `SELECT count(*), min(occurred_at) FROM (SELECT occurred_at FROM events
		WHERE (transaction_id, position) > ($1::text::xid8, $2)
		ORDER BY transaction_id, position LIMIT $3) behind`,
		[]any{strconv.FormatUint(after.Xid, 10), after.Position, limit}, func(rows pgx.Rows) error {
			_, err := pgx.ForEachRow(rows, []any{&n, &first}, func() error { return nil })
			return err
		})
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("behind: %w", Unavailable(err))
	}
	if first != nil {
		oldest = *first
	}
	return n, oldest, nil
}

// OrgHistory returns every committed event of an organization, read in one
// statement (one snapshot), in position order, which within a key is version
// order. Unlike OrgEvents it does not wait for the xid8 horizon: a replay of
// the organization wants everything committed when it reads, and a
// transaction left open elsewhere on the server must not cut it short.
func (s *Store) OrgHistory(ctx context.Context, orgID string) ([]domain.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+` FROM events e WHERE org_id = $1 ORDER BY e.position`, orgID)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", orgID, Unavailable(err))
	}
	events, _, err := scanEvents(rows)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", orgID, Unavailable(err))
	}
	return events, nil
}

// OrgEvents is Tail for one organization: its audit log, in ledger order.
func (s *Store) OrgEvents(ctx context.Context, orgID string, after Cursor, limit int) ([]domain.Event, Cursor, error) {
	return decodeTail(s.tail(ctx, "org_id = $4 AND ", after, limit, orgID))
}

// decodeTail decodes what tail read.
func decodeTail(raw []RawEvent, last Cursor, err error) ([]domain.Event, Cursor, error) {
	if err != nil || len(raw) == 0 {
		return nil, last, err
	}
	events, err := decodeEvents(raw)
	if err != nil {
		return nil, last, fmt.Errorf("tail: %w", err)
	}
	return events, last, nil
}

// ReadAll returns up to limit committed events with a position above after,
// in position order, through q (a pool, or the transaction of a rebuild that
// must see the log and write the views atomically). Within one stream,
// position order is version order. Unlike Tail it does not wait for the
// horizon: it is for readers that hold the views' locks, so that nothing can
// commit into what they read.
func ReadAll(ctx context.Context, q Querier, after int64, limit int) ([]domain.Event, error) {
	rows, err := q.Query(ctx, `SELECT `+eventColumns+` FROM events e WHERE position > $1 ORDER BY e.position LIMIT $2`, after, limit)
	if err != nil {
		return nil, Unavailable(err)
	}
	events, _, err := scanEvents(rows)
	return events, Unavailable(err)
}

// Querier is what pgxpool.Pool, pgx.Conn and pgx.Tx share for reading.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// OrgLog is OrgEvents with the cursor as the opaque token clients hold: the
// organization's audit log, a page at a time. after is "" for the start;
// next is the token to pass to read on, and is returned even when the page is
// empty, so a client can keep polling.
func (s *Store) OrgLog(ctx context.Context, orgID, after string, limit int) (events []domain.Event, next string, err error) {
	var c Cursor
	if after != "" {
		if c, err = ParseCursor(after); err != nil {
			return nil, "", err
		}
	}
	events, c, err = s.OrgEvents(ctx, orgID, c, limit)
	if err != nil {
		return nil, "", err
	}
	return events, c.String(), nil
}
