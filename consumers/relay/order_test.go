package relay_test

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/relay"
	"github.com/keyledger/keyledger/domain"
)

// TestRelayPublishesAcrossTransactionIdDigitBoundaries: ledger order is the
// numeric order of the transaction ids, also where they gain a digit (99999
// then 100000). The events are written with chosen transaction ids on both
// sides of every power of ten below the server's horizon, in an order that
// is neither numeric nor textual, and the relay, reading a few at a time or
// all at once, publishes them all in numeric order. (Tail used to sort by
// the transaction id as text: the relay published "100000" before "99999",
// and with small batches skipped events.)
func TestRelayPublishesAcrossTransactionIdDigitBoundaries(t *testing.T) {
	t.Parallel()
	for _, batch := range []int{2, 500} {
		t.Run(fmt.Sprintf("batch=%d", batch), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := testContext(t)

			var horizon string
			require.NoError(t, b.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&horizon))
			h, err := strconv.ParseUint(horizon, 10, 64)
			require.NoError(t, err)
			type row struct {
				xid      uint64
				position int64
				id       string
			}
			var want []row
			for p := uint64(10); p+2 < h; p *= 10 {
				for i, x := range []uint64{p + 1, p - 1, p, p - 2} {
					r := row{xid: x, id: domain.NewEventID()}
					keyID := domain.NewKeyID()
					require.NoError(t, b.pool.QueryRow(ctx, `INSERT INTO events (transaction_id, id, org_id, key_id, stream_version, type, actor, occurred_at, data)
						VALUES ($1::text::xid8, $2, $3, $4, 1, 'key.revoked', 'raw-writer', now(), jsonb_build_object('key_id', $4::text, 'key_hash', '', 'reason', 'raw'))
						RETURNING position`, strconv.FormatUint(x, 10), r.id, fmt.Sprintf("org_%d", i/2), keyID).Scan(&r.position))
					want = append(want, r)
				}
			}
			require.GreaterOrEqual(t, len(want), 8, "the server's horizon %d is too low to cross two digit-count boundaries", h)
			slices.SortFunc(want, func(a, b row) int {
				return cmp.Or(cmp.Compare(a.xid, b.xid), cmp.Compare(a.position, b.position))
			})
			var wantIDs []string
			for _, r := range want {
				wantIDs = append(wantIDs, r.id)
			}

			b.startRelay(t, b.store, func(c *relay.Config) { c.Batch = batch })
			b.waitStreamMsgs(t, 30*time.Second, uint64(len(want)))
			// Give a relay that would publish an event twice the time to.
			time.Sleep(300 * time.Millisecond)

			msgs := b.streamMessages(t)
			var got []string
			for _, m := range msgs {
				got = append(got, m.Header.Get(jetstream.MsgIDHeader))
			}
			require.Equal(t, wantIDs, got, "the stream is not in ledger order")
			ledger := b.ledgerOrder(t)
			require.Equal(t, wantIDs, ids(ledger))
			b.requireStreamIsLedger(t, ledger, msgs)

			last := want[len(want)-1]
			waitFor(t, 10*time.Second, "the checkpoint at the last event", func() bool {
				var xid string
				var pos int64
				err := b.pool.QueryRow(context.Background(), `SELECT transaction_id::text, position FROM relay_checkpoints WHERE name = $1`,
					b.cfg.Stream).Scan(&xid, &pos)
				return err == nil && xid == strconv.FormatUint(last.xid, 10) && pos == last.position
			})
		})
	}
}
