package relay_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

// TestALostStreamIsMadeAgainAndFollowersStartOver: the stream is deleted
// while the relay leads (a NATS server lost with its storage, an operator).
// The relay makes it again and publishes what comes next; the new stream
// numbers its messages from 1 again, and a follower that had applied more
// than that does not wait for sequences it believes it has seen, nor calls
// itself current on the new stream's heartbeats: it starts over, reads the
// new stream from its start, and drops what its cache learned (a Gap).
func TestALostStreamIsMadeAgainAndFollowersStartOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sink := newRecorder()
	f := b.startFollower(t, sink)
	b.startRelay(t, b.store, nil)

	before := b.commands(t, b.ledger, 10)
	waitFor(t, 20*time.Second, "the follower to apply the first notices", func() bool { return sink.len() >= before })
	waitFor(t, 10*time.Second, "the follower to be current", func() bool { return f.CurrentWithin(time.Second) })
	appliedBefore := f.Applied()
	require.Greater(t, appliedBefore, uint64(3))

	ctx := testContext(t)
	require.NoError(t, b.js.DeleteStream(ctx, b.cfg.Stream))
	keyID := b.generate(t, b.ledger, "org-after")
	b.revoke(t, b.ledger, "org-after", keyID)

	waitFor(t, 30*time.Second, "the relay to make the stream again with the new events", func() bool {
		s, err := b.js.Stream(ctx, b.cfg.Stream)
		return err == nil && s.CachedInfo().State.Msgs >= 2
	})
	waitFor(t, 30*time.Second, "the follower to apply the new stream's notices", func() bool {
		for _, e := range sink.snapshot() {
			if e.KeyID == keyID && e.Type == domain.TypeKeyRevoked {
				return true
			}
		}
		return false
	})
	sink.mu.Lock()
	gaps := sink.gaps
	sink.mu.Unlock()
	require.GreaterOrEqual(t, gaps, 1, "the follower told its sink that what it learned may be stale")
	require.Less(t, f.Applied(), appliedBefore, "the follower reads the new stream by its own sequences: "+strconv.FormatUint(f.Applied(), 10))
	waitFor(t, 10*time.Second, "the follower to be current on the new stream", func() bool { return f.CurrentWithin(time.Second) })
}

// TestRepublishFromAPositionStartsAtTheFirstEventInLedgerOrder: ledger
// order is (transaction id, position), and a transaction can hold a lower
// id than another that took a lower position. Republishing from position P
// must include every event at P or after it, also one whose transaction id
// is lower than that of the event at P.
func TestRepublishFromAPositionStartsAtTheFirstEventInLedgerOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	var horizon uint64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint`).Scan(&horizon))
	// Positions 1, 2, 3 with transaction ids 5, 9, 7: ledger order is 1, 3, 2.
	var ids []string
	for _, xid := range []uint64{5, 9, 7} {
		id := domain.NewEventID()
		keyID := domain.NewKeyID()
		_, err := b.pool.Exec(ctx, `INSERT INTO events (transaction_id, id, org_id, key_id, stream_version, type, actor, occurred_at, data)
			VALUES ($1::text::xid8, $2, 'org-r', $3, 1, 'key.revoked', 'raw-writer', now(), jsonb_build_object('key_id', $3::text, 'key_hash', '', 'reason', 'raw'))`,
			strconv.FormatUint(xid, 10), id, keyID)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.Less(t, uint64(9), horizon)
	var positions []int64
	rows, err := b.pool.Query(ctx, `SELECT position FROM events ORDER BY position`)
	require.NoError(t, err)
	for rows.Next() {
		var p int64
		require.NoError(t, rows.Scan(&p))
		positions = append(positions, p)
	}
	require.NoError(t, rows.Err())
	require.Len(t, positions, 3)

	ru := b.startRelay(t, b.store, nil)
	b.waitStreamMsgs(t, 30*time.Second, 3)
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(ctx))

	n, err := ru.relay.Republish(ctx, positions[1], nil)
	require.NoError(t, err)
	require.Equal(t, 2, n, "the events at the second position and after it: the second and the third")
	got := b.streamMessages(t)
	require.Len(t, got, 2)
	var gotIDs []string
	for _, m := range got {
		gotIDs = append(gotIDs, m.Header.Get(jetstream.MsgIDHeader))
	}
	require.Contains(t, gotIDs[0], ids[2], "the third position comes first: its transaction id is lower")
	require.Contains(t, gotIDs[1], ids[1])
}
