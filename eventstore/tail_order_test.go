package eventstore_test

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// insertAtXid inserts one key.revoked event of org whose transaction_id is
// xid, not the inserting transaction's own: the way to put events on both
// sides of a transaction id boundary (9999 | 10000, 99999 | 100000, ...)
// without making the cluster consume that many transaction ids. xid must lie
// below the horizon for the readers to see it.
func insertAtXid(t *testing.T, ctx context.Context, pool *pgxpool.Pool, org string, xid uint64) ledgerRow {
	t.Helper()
	r := ledgerRow{id: domain.NewEventID(), keyID: domain.NewKeyID(), version: 1, xid: xid}
	err := pool.QueryRow(ctx, `INSERT INTO events (transaction_id, id, org_id, key_id, stream_version, type, actor, occurred_at, data)
		VALUES ($1::text::xid8, $2, $3, $4, 1, 'key.revoked', 'raw-writer', now(), jsonb_build_object('key_id', $4::text, 'key_hash', '', 'reason', 'raw'))
		RETURNING position`,
		strconv.FormatUint(xid, 10), r.id, org, r.keyID).Scan(&r.position)
	require.NoError(t, err)
	return r
}

// boundaryXids returns transaction ids on both sides of every power of ten
// from 10 up to the server's horizon, in an order that is neither numeric
// nor textual, so that positions follow neither.
func boundaryXids(t *testing.T, ctx context.Context, pool *pgxpool.Pool) []uint64 {
	t.Helper()
	var horizon string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&horizon))
	h, err := strconv.ParseUint(horizon, 10, 64)
	require.NoError(t, err)
	var xids []uint64
	for p := uint64(10); p+2 < h; p *= 10 {
		xids = append(xids, p+1, p-1, p, p-2)
	}
	require.GreaterOrEqual(t, len(xids), 8, "the server's horizon %d is too low to cross two digit-count boundaries", h)
	return xids
}

// TestTailOrdersTransactionIdsAsNumbers is the deterministic case of the skip
// seen when the cluster's transaction ids went from 99999 to 100000: ledger
// order is the numeric order of transaction_id, and a reader paging through
// events on both sides of a digit-count boundary gets them all, in that
// order. (The event columns select transaction_id::text, an output column
// named transaction_id; a bare ORDER BY transaction_id sorted by that text,
// so "100000" came before "99999", and the cursor jumped over the events
// with fewer digits.)
func TestTailOrdersTransactionIdsAsNumbers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	var want []ledgerRow
	orgOf := map[string]string{}
	for i, x := range boundaryXids(t, ctx, b.pool) {
		org := fmt.Sprintf("org-%d", (i/2)%2) // each org straddles each boundary
		r := insertAtXid(t, ctx, b.pool, org, x)
		orgOf[r.id] = org
		want = append(want, r)
	}
	slices.SortFunc(want, func(a, b ledgerRow) int {
		if c := cmp.Compare(a.xid, b.xid); c != 0 {
			return c
		}
		return cmp.Compare(a.position, b.position)
	})
	wantIDs := func(org string) []string {
		var ids []string
		for _, r := range want {
			if org == "" || orgOf[r.id] == org {
				ids = append(ids, r.id)
			}
		}
		return ids
	}

	// The test's own reading of the table agrees.
	var ledgerIDs []string
	for _, r := range readLedger(t, b.pool) {
		ledgerIDs = append(ledgerIDs, r.id)
	}
	require.Equal(t, wantIDs(""), ledgerIDs, "readLedger is not in ledger order")

	for _, limit := range []int{1, 2, 3, 100} {
		t.Run(fmt.Sprintf("Tail/limit=%d", limit), func(t *testing.T) {
			var got []string
			var cursor eventstore.Cursor
			for {
				events, next, err := b.store.Tail(ctx, cursor, limit)
				require.NoError(t, err)
				if len(events) == 0 {
					require.Equal(t, cursor, next)
					break
				}
				for _, e := range events {
					got = append(got, e.ID)
				}
				cursor = next
			}
			require.Equal(t, wantIDs(""), got)
		})
		t.Run(fmt.Sprintf("OrgLog/limit=%d", limit), func(t *testing.T) {
			var got []string
			token := ""
			for {
				events, next, err := b.store.OrgLog(ctx, "org-1", token, limit)
				require.NoError(t, err)
				token = next
				if len(events) == 0 {
					break
				}
				for _, e := range events {
					got = append(got, e.ID)
				}
			}
			require.Equal(t, wantIDs("org-1"), got)
		})
	}

	// Behind counts what lies after a cursor in the same order.
	last := want[len(want)-1]
	for i, r := range want {
		n, _, err := b.store.Behind(ctx, eventstore.Cursor{Xid: r.xid, Position: r.position}, 1000)
		require.NoError(t, err)
		require.Equal(t, len(want)-1-i, n, "behind (%d,%d)", r.xid, r.position)
	}
	n, _, err := b.store.Behind(ctx, eventstore.Cursor{Xid: last.xid, Position: last.position}, 1000)
	require.NoError(t, err)
	require.Zero(t, n)
}
