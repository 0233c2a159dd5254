package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/consumers/relay"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// TestRelayPublishesEveryCommittedEventOnceInLedgerOrder is the relay's
// main guarantee (DESIGN 5, issue 3 item 1): every committed event is in the
// stream once, in ledger order, on <prefix>.<org>.<type> with Nats-Msg-Id =
// event id and the event's envelope as body; a follower applies them all in
// order; heartbeats make an idle follower current; the lag gauges read 0
// when the relay has caught up.
func TestRelayPublishesEveryCommittedEventOnceInLedgerOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sink := newRecorder()
	f := b.startFollower(t, sink)
	ru := b.startRelay(t, b.store, nil)

	// Concurrent commands, so that transactions commit out of position
	// order.
	const writers, perWriter = 4, 15
	var wg sync.WaitGroup
	var total atomic.Int64
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			total.Add(int64(b.commands(t, b.ledger, perWriter)))
		}()
	}
	wg.Wait()
	n := int(total.Load())
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))

	ledger := b.ledgerOrder(t)
	require.Len(t, ledger, n)
	b.requireStreamIsLedger(t, ledger, b.streamMessages(t))
	waitFor(t, 20*time.Second, "the follower to apply every notice", func() bool { return sink.len() >= n })
	sink.requireAppliedOnceInOrder(t, ledger)

	// Idle now: heartbeats keep the follower current.
	waitFor(t, 10*time.Second, "the follower to be current", func() bool { return f.CurrentWithin(time.Second) })
	at := f.CurrentAt()
	waitFor(t, 10*time.Second, "a later heartbeat", func() bool { return f.CurrentAt().After(at) })
	require.Equal(t, uint64(n), f.Applied())

	// Metrics: caught up.
	waitFor(t, 10*time.Second, "lag gauges at 0", func() bool {
		return metric(t, ru.reg, "keyledger_relay_lag_events") == 0 && metric(t, ru.reg, "keyledger_relay_lag_seconds") == 0
	})
	require.Equal(t, 1.0, metric(t, ru.reg, "keyledger_relay_leading"))
	require.Equal(t, float64(n), metric(t, ru.reg, "keyledger_relay_published_total"))
	require.Equal(t, float64(ledger[len(ledger)-1].Position), metric(t, ru.reg, "keyledger_relay_position"))
	require.Zero(t, metric(t, ru.reg, "keyledger_relay_publish_errors_total"))
	waitFor(t, 10*time.Second, "the checkpoint at the last event", func() bool {
		return b.checkpoint(t) == ledger[len(ledger)-1].Position
	})
}

// TestRelayLagGaugesMeasureUnpublishedEvents: while the relay cannot keep up
// (here: it is not running), the events appended count as lag once it
// starts measuring, and drop to 0 when it has published them.
func TestRelayLagGaugesMeasureUnpublishedEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	n := b.commands(t, b.ledger, 5)
	ru := b.startRelay(t, b.store, nil)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	waitFor(t, 10*time.Second, "lag gauges at 0", func() bool {
		return metric(t, ru.reg, "keyledger_relay_lag_events") == 0 && metric(t, ru.reg, "keyledger_relay_lag_seconds") == 0
	})
}

// TestRelayKilledBetweenPublishAndCheckpointPublishesNoDuplicate: a relay
// that dies after publishing but before checkpointing republishes from its
// older checkpoint; JetStream drops the duplicates by Nats-Msg-Id, so the
// stream does not grow and a follower applies nothing twice.
func TestRelayKilledBetweenPublishAndCheckpointPublishesNoDuplicate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sink := newRecorder()
	b.startFollower(t, sink)
	first := b.startRelay(t, b.store, nil)
	n := b.commands(t, b.ledger, 12)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	ledger := b.ledgerOrder(t)
	waitFor(t, 10*time.Second, "the checkpoint at the last event", func() bool {
		return b.checkpoint(t) == ledger[len(ledger)-1].Position
	})
	first.stop()

	// The crash: the checkpoint is where it was before the last batches
	// (here: nowhere at all, then halfway).
	for _, rewind := range []func(){
		func() {
			_, err := b.pool.Exec(context.Background(), `DELETE FROM relay_checkpoints WHERE name = $1`, b.cfg.Stream)
			require.NoError(t, err)
		},
		func() {
			mid := ledger[len(ledger)/2]
			_, err := b.pool.Exec(context.Background(), `UPDATE relay_checkpoints
				SET transaction_id = (SELECT transaction_id FROM events WHERE id = $2), position = $3 WHERE name = $1`,
				b.cfg.Stream, mid.ID, mid.Position)
			require.NoError(t, err)
		},
	} {
		rewind()
		ru := b.startRelay(t, b.store, nil)
		// One more event, to know when the new relay has caught up.
		b.generate(t, b.ledger, "org_0")
		n++
		ledger = b.ledgerOrder(t)
		waitFor(t, 30*time.Second, "the checkpoint at the new last event", func() bool {
			return b.checkpoint(t) == ledger[len(ledger)-1].Position
		})
		require.Greater(t, metric(t, ru.reg, "keyledger_relay_published_total"), 1.0, "the new relay republished")
		ru.stop()
		require.Equal(t, uint64(n), b.streamState(t).Msgs, "duplicates in the stream")
		b.requireStreamIsLedger(t, ledger, b.streamMessages(t))
		waitFor(t, 20*time.Second, "the follower to apply every notice", func() bool { return sink.len() >= n })
		sink.requireAppliedOnceInOrder(t, ledger)
	}
}

// versionSink is what keycache does with a notice it has seen: it drops an
// event whose stream version is not above the version it holds for that
// key (keycache compares StreamVersion the same way), so a duplicate that
// JetStream delivered again, outside its duplicate window, changes nothing.
type versionSink struct {
	recorder
	versions map[string]int64
	kept     []domain.Event
}

func (s *versionSink) Apply(e domain.Event) {
	s.recorder.Apply(e)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.StreamVersion <= s.versions[e.KeyID] {
		return
	}
	s.versions[e.KeyID] = e.StreamVersion
	s.kept = append(s.kept, e)
}

// TestDuplicatesOutsideTheWindowAreDroppedByTheConsumer: beyond JetStream's
// duplicate window, a relay that restarts from an old checkpoint stores its
// duplicates, and Republish always does (its messages carry ids of their
// own); the follower delivers them again, under new stream sequences, and a
// sink that checks stream versions drops them.
func TestDuplicatesOutsideTheWindowAreDroppedByTheConsumer(t *testing.T) {
	t.Parallel()
	const window = 200 * time.Millisecond
	b := setup(t, withDuplicateWindow(window))
	sink := &versionSink{recorder: *newRecorder(), versions: map[string]int64{}}
	b.startFollower(t, sink)
	first := b.startRelay(t, b.store, nil)
	n := b.commands(t, b.ledger, 6)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	ledger := b.ledgerOrder(t)
	waitFor(t, 20*time.Second, "the checkpoint at the last event", func() bool {
		return b.checkpoint(t) == ledger[len(ledger)-1].Position
	})
	first.stop()

	// Killed before its checkpoint, restarted past the window.
	time.Sleep(3 * window) // JetStream forgets the ids after the window
	_, err := b.pool.Exec(context.Background(), `DELETE FROM relay_checkpoints WHERE name = $1`, b.cfg.Stream)
	require.NoError(t, err)
	second := b.startRelay(t, b.store, nil)
	b.waitStreamMsgs(t, 30*time.Second, uint64(2*n))
	second.stop()
	b.requireStreamIsLedger(t, append(append([]domain.Event(nil), ledger...), ledger...), b.streamMessages(t))

	done, err := second.relay.Republish(testContext(t), 0, nil)
	require.NoError(t, err)
	require.Equal(t, n, done)
	b.waitStreamMsgs(t, 30*time.Second, uint64(3*n))
	waitFor(t, 20*time.Second, "the follower to get the duplicates", func() bool { return sink.len() >= 3*n })

	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, e := range ledger {
		require.Equal(t, 3, sink.count[e.ID], "event %s delivered three times", e.ID)
	}
	require.Equal(t, append(append(ids(ledger), ids(ledger)...), ids(ledger)...), ids(sink.applied))
	require.Equal(t, ids(ledger), ids(sink.kept), "the version check drops the duplicates")
}

// TestOneRelayLeadsAndAnotherTakesOver: two relays on one database (two
// service instances): exactly one publishes, nothing is published twice, and
// when the leader stops the other takes over within seconds and publishes
// what is appended afterwards, in order.
func TestOneRelayLeadsAndAnotherTakesOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sink := newRecorder()
	b.startFollower(t, sink)
	// Each instance has its own pool and store on the database.
	storeA := eventstore.New(pgtest.PoolFor(t, b.dbURL, 4))
	storeB := eventstore.New(pgtest.PoolFor(t, b.dbURL, 4))
	a := b.startRelay(t, storeA, nil)
	bb := b.startRelay(t, storeB, nil)
	leading := func() (float64, float64) {
		return metric(t, a.reg, "keyledger_relay_leading"), metric(t, bb.reg, "keyledger_relay_leading")
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { la, lb := leading(); return la+lb == 1 })

	// Both stay up while commands run: one leader throughout.
	ledgerA := &domain.Ledger{Store: storeA, KeyPrefix: domain.DefaultKeyPrefix, Now: time.Now}
	ledgerB := &domain.Ledger{Store: storeB, KeyPrefix: domain.DefaultKeyPrefix, Now: time.Now}
	n := 0
	for i := range 10 {
		n += b.commands(t, ledgerA, 1)
		n += b.commands(t, ledgerB, 1)
		la, lb := leading()
		require.Equal(t, 1.0, la+lb, "leaders at step %d", i)
	}
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	la, lb := leading()
	require.Equal(t, 1.0, la+lb)
	leader, standby := a, bb
	if lb == 1 {
		leader, standby = bb, a
	}
	require.Equal(t, float64(n), metric(t, leader.reg, "keyledger_relay_published_total"))
	require.Zero(t, metric(t, standby.reg, "keyledger_relay_published_total"))

	// The leader stops: the standby takes over and goes on.
	leader.stop()
	start := time.Now()
	waitFor(t, 10*time.Second, "the standby to lead", func() bool {
		return metric(t, standby.reg, "keyledger_relay_leading") == 1
	})
	t.Logf("takeover after %s", time.Since(start))
	n += b.commands(t, ledgerA, 5)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))

	// The first instance comes back as a standby; the second stops; the
	// first leads again (a second leadership of one Relay value).
	again := b.startRelay(t, storeA, nil)
	time.Sleep(time.Second) // a few leadership intervals
	require.Zero(t, metric(t, again.reg, "keyledger_relay_leading"), "two leaders")
	standby.stop()
	waitFor(t, 10*time.Second, "the restarted instance to lead", func() bool {
		return metric(t, again.reg, "keyledger_relay_leading") == 1
	})
	n += b.commands(t, ledgerB, 5)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))

	ledger := b.ledgerOrder(t)
	require.Len(t, ledger, n)
	b.requireStreamIsLedger(t, ledger, b.streamMessages(t))
	waitFor(t, 20*time.Second, "the follower to apply every notice", func() bool { return sink.len() >= n })
	sink.requireAppliedOnceInOrder(t, ledger)
}

// TestRelayWakesOnCommit: with a poll interval (and heartbeat, which also
// makes the relay look) of a minute, an event reaches
// the stream within about a second of its commit: the relay is woken by the
// commit, not by its timer. Two writers: the relay's own store (a wake-up
// in process), and another store on a pool of its own with its notifier
// running (LISTEN/NOTIFY, as another service instance would).
func TestRelayWakesOnCommit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ru := b.startRelay(t, b.store, func(c *relay.Config) { c.Poll, c.Heartbeat = time.Minute, time.Minute })
	waitFor(t, 10*time.Second, "the relay to lead", func() bool { return metric(t, ru.reg, "keyledger_relay_leading") == 1 })
	// Let the relay reach its wait: its first read of the empty ledger
	// is done when it has measured the lag once.
	time.Sleep(200 * time.Millisecond)

	other := eventstore.New(pgtest.PoolFor(t, b.dbURL, 4))
	stopNotifier := runInBackground(t, func(ctx context.Context) { other.RunNotifier(ctx, slog.New(slog.DiscardHandler)) })
	defer stopNotifier()
	otherLedger := &domain.Ledger{Store: other, KeyPrefix: domain.DefaultKeyPrefix, Now: time.Now}

	const bound = 5 * time.Second // "about a second", generous on a loaded 2-core machine
	for i, write := range []func(){
		func() { b.generate(t, b.ledger, "org_0") },
		func() { b.generate(t, otherLedger, "org_1") },
	} {
		start := time.Now()
		write()
		b.waitStreamMsgs(t, bound, uint64(i+1))
		t.Logf("writer %d: in the stream after %s", i, time.Since(start))
	}

	// A commit that the relay cannot read when it wakes, because another
	// transaction (one that will never signal a commit: it rolls back, or
	// belongs to another application on the server) holds the xid8
	// horizon back: the relay must not wait for its poll once the horizon
	// moves.
	tx, err := b.pool.Begin(testContext(t))
	require.NoError(t, err)
	released := make(chan struct{})
	defer func() { <-released }()
	_, err = tx.Exec(context.Background(), `SELECT pg_current_xact_id()`)
	if err != nil {
		close(released)
		require.NoError(t, err)
	}
	b.generate(t, b.ledger, "org_0")
	go func() {
		defer close(released)
		time.Sleep(300 * time.Millisecond)
		_ = tx.Rollback(context.Background())
	}()
	b.waitStreamMsgs(t, bound, 3)
}

// TestRepublishRefillsAPurgedStream: the stream is not the only copy;
// Republish refills it from a ledger position, in ledger order, and reports
// progress; a position beyond the head is refused with a clear error.
func TestRepublishRefillsAPurgedStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ru := b.startRelay(t, b.store, nil)
	n := b.commands(t, b.ledger, 9)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	ru.stop()
	ledger := b.ledgerOrder(t)

	ctx := testContext(t)
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(ctx))
	require.Zero(t, b.streamState(t).Msgs)

	from := ledger[3].Position
	var calls []int
	var lastPos int64
	done, err := ru.relay.Republish(ctx, from, func(d int, pos int64) { calls = append(calls, d); lastPos = pos })
	require.NoError(t, err)
	require.Equal(t, n-3, done)
	require.NotEmpty(t, calls, "progress was not called")
	require.Equal(t, done, calls[len(calls)-1], "the last progress call reports the total")
	require.Equal(t, ledger[len(ledger)-1].Position, lastPos)
	b.waitStreamMsgs(t, 10*time.Second, uint64(n-3))
	b.requireStreamIsRepublished(t, ledger[3:], b.streamMessages(t))

	// Again from the start, without a purge: Republish does not rely on
	// the duplicate window (a purge does not clear it), so the events
	// still in the stream are there twice now; followers drop the second
	// copies by stream version.
	done, err = ru.relay.Republish(ctx, 0, nil)
	require.NoError(t, err)
	require.Equal(t, n, done)
	b.waitStreamMsgs(t, 10*time.Second, uint64(n-3+n))
	b.requireStreamIsRepublished(t, append(append([]domain.Event(nil), ledger[3:]...), ledger...), b.streamMessages(t))

	_, err = ru.relay.Republish(ctx, ledger[len(ledger)-1].Position+1, nil)
	require.ErrorContains(t, err, "no event at position")
}

// TestRepublishWaitsForTheHorizon: an event committed before Republish
// starts is republished even when another transaction on the server holds
// the xid8 horizon back for a while (Tail cannot read it yet).
func TestRepublishWaitsForTheHorizon(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ru := b.startRelay(t, b.store, nil)
	n := b.commands(t, b.ledger, 3)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	ru.stop()
	ctx := testContext(t)
	s, err := b.js.Stream(ctx, b.cfg.Stream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(ctx))

	// A transaction with an xid, open across the next append.
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	_, err = tx.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)
	b.generate(t, b.ledger, "org_0")
	n++
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(500 * time.Millisecond)
		_ = tx.Rollback(context.Background())
	}()
	defer func() { <-released }()
	done, err := ru.relay.Republish(ctx, 0, nil)
	require.NoError(t, err)
	require.Equal(t, n, done, "events committed before Republish started")
	b.waitStreamMsgs(t, 10*time.Second, uint64(n))
}

// TestHeartbeatsDoNotWaitForThePoll: the relay says it is caught up every
// Heartbeat, also when nothing commits and its poll interval is long, so an
// idle follower stays current (a gateway's staleness bound is 5 s by
// default, far below a slow poll).
func TestHeartbeatsDoNotWaitForThePoll(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.startFollower(t, newRecorder())
	b.startRelay(t, b.store, func(c *relay.Config) { c.Poll = time.Minute })
	waitFor(t, 10*time.Second, "the follower to be current", func() bool { return f.CurrentWithin(time.Second) })
	for range 3 {
		at := f.CurrentAt()
		waitFor(t, 5*time.Second, "a later heartbeat", func() bool { return f.CurrentAt().After(at) })
	}
}

// TestHeartbeatVouchesForWhatItMeasured: an idle relay's heartbeat names the
// stream's last sequence, and its lag is not zero: it runs from the moment
// the relay looked at the ledger to the moment it sent the heartbeat, since
// an event committed in between is not covered by it.
func TestHeartbeatVouchesForWhatItMeasured(t *testing.T) {
	t.Parallel()
	b := setup(t)
	beats := make(chan notices.Heartbeat, 100)
	sub, err := b.nc.Subscribe(b.cfg.HeartbeatSubject(), func(m *nats.Msg) {
		var hb notices.Heartbeat
		if json.Unmarshal(m.Data, &hb) == nil {
			select {
			case beats <- hb:
			default:
			}
		}
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	b.startRelay(t, b.store, nil)
	n := b.commands(t, b.ledger, 4)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n))
	deadline := time.After(20 * time.Second)
	for {
		select {
		case hb := <-beats:
			if hb.StreamSeq != uint64(n) {
				continue // from before the relay caught up
			}
			require.Greater(t, hb.Lag(), time.Duration(0))
			require.Less(t, hb.Lag(), 5*time.Second)
			return
		case <-deadline:
			t.Fatal("no heartbeat for the last sequence")
		}
	}
}

// TestRepublishWhileTheRelayPublishes: a Republish and the relay publish to
// one stream at once, each message of a batch expecting the one its
// publisher sent before; each refuses the other's messages as out of turn
// and sends again, and in the end the stream holds the relay's copy of
// every event once and the republished copies, each in ledger order.
func TestRepublishWhileTheRelayPublishes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ru := b.startRelay(t, b.store, nil)
	n := b.commands(t, b.ledger, 450) // over one batch (500 events) to republish
	b.waitStreamMsgs(t, 60*time.Second, uint64(n))

	ctx := testContext(t)
	republished := make(chan int, 1)
	go func() {
		done, err := ru.relay.Republish(ctx, 0, nil)
		assert.NoError(t, err)
		republished <- done
	}()
	// Meanwhile commands from several goroutines, which commit in groups
	// that the relay publishes in batches of several events.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 30 {
				_, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: fmt.Sprintf("org_%d", g), Name: "key", Actor: "test"}, "")
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	n += 8 * 30
	var again int
	select {
	case again = <-republished:
	case <-time.After(60 * time.Second):
		t.Fatal("Republish did not finish")
	}
	ledger := b.ledgerOrder(t)
	require.Len(t, ledger, n)
	b.waitStreamMsgs(t, 30*time.Second, uint64(n+again))

	var relayed, copies []*jetstream.RawStreamMsg
	for _, m := range b.streamMessages(t) {
		if strings.Contains(m.Header.Get(jetstream.MsgIDHeader), ".republished.") {
			copies = append(copies, m)
		} else {
			relayed = append(relayed, m)
		}
	}
	b.requireStreamIsLedger(t, ledger, relayed)
	require.GreaterOrEqual(t, again, n-8*30, "Republish covers what had committed before it started")
	b.requireStreamIsRepublished(t, ledger[:again], copies)
}

// TestACommitAfterABusyReadIsPublishedAtOnce: after a read that found a
// stream of commits (8 events or more), the relay reads again when its read
// interval (3 ms) ends, not when a commit wakes it; a commit made meanwhile
// must still go out then, not at the next poll or heartbeat (a minute here).
func TestACommitAfterABusyReadIsPublishedAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startRelay(t, b.store, func(c *relay.Config) { c.Poll, c.Heartbeat = time.Minute, time.Minute })
	const burst = 12
	var published uint64
	for range 3 {
		// Concurrent generates commit in a group or two: the relay's read
		// of them finds most of the burst at once.
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() { b.generate(t, b.ledger, "org_busy") })
		}
		wg.Wait()
		published += burst
		b.waitStreamMsgs(t, 10*time.Second, published)

		b.generate(t, b.ledger, "org_busy")
		published++
		b.waitStreamMsgs(t, 10*time.Second, published)
	}
}
