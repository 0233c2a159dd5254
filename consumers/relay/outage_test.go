package relay_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/relay"
)

// TestNATSOutageLosesNoEvent is DESIGN 6.1 for notices (issue 3 item 7):
// NATS stops while commands keep succeeding (the event table is the outbox);
// when it is back, every event arrives, in ledger order, none missing and
// none applied twice. The server is a real nats-server in this process, on a
// fixed port and store directory, stopped and started again; the shared
// server is left alone. Publish errors are counted during the outage, and
// the lag gauges return to 0 afterwards.
func TestNATSOutageLosesNoEvent(t *testing.T) {
	t.Parallel()
	srv := startEmbedded(t)
	b := setup(t, withNATS(srv.url()))
	sink := newRecorder()
	f := b.startFollower(t, sink)
	ru := b.startRelay(t, b.store, nil)

	n := b.commands(t, b.ledger, 6)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))

	srv.stop()
	stoppedAt := time.Now()
	// Commands go on succeeding while NATS is down.
	for range 3 {
		n += b.commands(t, b.ledger, 3)
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, 20*time.Second, "publish errors to be counted", func() bool {
		return metric(t, ru.reg, "keyledger_relay_publish_errors_total") > 0
	})
	waitFor(t, 20*time.Second, "the lag gauges to show the outage", func() bool {
		return metric(t, ru.reg, "keyledger_relay_lag_events") > 0 && metric(t, ru.reg, "keyledger_relay_lag_seconds") > 0
	})
	require.Less(t, f.AppliedCount(), uint64(n))
	// No heartbeat can reach the follower: a second after the last one, it
	// no longer claims to be current.
	time.Sleep(max(0, 1500*time.Millisecond-time.Since(stoppedAt)))
	require.False(t, f.CurrentWithin(time.Second), "the follower cannot be current while NATS is down")

	srv.start()
	n += b.commands(t, b.ledger, 3)
	b.waitStreamMsgs(t, 60*time.Second, uint64(n))

	ledger := b.ledgerOrder(t)
	require.Len(t, ledger, n)
	b.requireStreamIsLedger(t, ledger, b.streamMessages(t))
	waitFor(t, 30*time.Second, "the follower to apply every notice", func() bool { return sink.len() >= n })
	sink.requireAppliedOnceInOrder(t, ledger)
	waitFor(t, 10*time.Second, "the follower to be current again", func() bool { return f.CurrentWithin(2 * time.Second) })
	waitFor(t, 10*time.Second, "lag gauges at 0", func() bool {
		return metric(t, ru.reg, "keyledger_relay_lag_events") == 0 && metric(t, ru.reg, "keyledger_relay_lag_seconds") == 0
	})
}

// TestRelayStartsWhileNATSIsDown: a relay that takes the lead while NATS is
// down keeps trying to make its stream, and publishes everything once NATS
// is up.
func TestRelayStartsWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	srv := startEmbedded(t)
	b := setup(t, withNATS(srv.url()))
	srv.stop()
	n := b.commands(t, b.ledger, 4)
	ru := b.startRelay(t, b.store, func(c *relay.Config) { c.Poll = 100 * time.Millisecond })
	waitFor(t, 20*time.Second, "publish errors to be counted", func() bool {
		return metric(t, ru.reg, "keyledger_relay_publish_errors_total") > 0
	})
	require.Equal(t, 1.0, metric(t, ru.reg, "keyledger_relay_leading"), "the relay keeps the lead while NATS is down")
	srv.start()
	b.waitStreamMsgs(t, 60*time.Second, uint64(n))
	b.requireStreamIsLedger(t, b.ledgerOrder(t), b.streamMessages(t))
}
