package eventstore_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

// wakeBound is how soon a wake-up must come: "soon after the commit", with
// room for a loaded 2-core machine; the readers' poll is far longer.
const wakeBound = 5 * time.Second

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// drain empties a wake-up channel of what it already holds (the wake-up
// sent when the LISTEN connection is made, for one).
func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

// processes returns n stores on one new database, each on a pool of its
// own, as n processes would have.
func processes(t *testing.T, n int) []*eventstore.Store {
	url := pgtest.NewDatabase(t)
	stores := make([]*eventstore.Store, n)
	for i := range stores {
		stores[i] = eventstore.New(pgtest.PoolFor(t, url, 4))
	}
	return stores
}

// startNotifier runs s's notifier until the test ends.
func startNotifier(t *testing.T, s *eventstore.Store) {
	ctx, cancel := context.WithCancel(testContext(t))
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunNotifier(ctx, quiet())
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func requireWoken(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wakeBound):
		t.Fatalf("no wake-up within %s after %s", wakeBound, what)
	}
}

// TestWakeupsComeAtOnceForThisStoresAppends: a reader of the same Store is
// woken by an append and by an import, without NOTIFY.
func TestWakeupsComeAtOnceForThisStoresAppends(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	ch := b.store.Wakeups(ctx, quiet())
	drain(ch)
	appendKey(t, b.store, "org")
	select {
	case <-ch:
	default:
		t.Fatal("no wake-up right after Append returned")
	}
	_, err := b.store.Import(ctx, []domain.Event{generated("org", domain.NewKeyID(), time.Now())})
	require.NoError(t, err)
	select {
	case <-ch:
	default:
		t.Fatal("no wake-up right after Import returned")
	}
}

// TestWakeupsCrossProcessesThroughNotify: a store on another pool (as in
// another process) is woken by LISTEN/NOTIFY when RunNotifier runs on the
// appending store, and only then.
func TestWakeupsCrossProcessesThroughNotify(t *testing.T) {
	t.Parallel()
	stores := processes(t, 2)
	writer, reader := stores[0], stores[1]
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	ch := reader.Wakeups(ctx, quiet())
	requireWoken(t, ch, "listening began") // sent once LISTEN is in place
	drain(ch)

	// Without a notifier, another process hears nothing.
	appendKey(t, writer, "org")
	select {
	case <-ch:
		t.Fatal("woken without a notifier")
	case <-time.After(300 * time.Millisecond):
	}

	startNotifier(t, writer)
	// The append above left a NOTIFY pending: the notifier sends it.
	requireWoken(t, ch, "the notifier started with a commit pending")
	for i := range 3 {
		drain(ch)
		appendKey(t, writer, "org")
		requireWoken(t, ch, "append "+string(rune('1'+i)))
	}
}

// TestWakeupsIgnoreTheStoresOwnNotify: a reader of the appending store is
// woken once per commit, at the commit, not again by the NOTIFY that
// announces it to other processes; a reader on another pool still hears it.
func TestWakeupsIgnoreTheStoresOwnNotify(t *testing.T) {
	t.Parallel()
	stores := processes(t, 2)
	writer, other := stores[0], stores[1]
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	own, theirs := writer.Wakeups(ctx, quiet()), other.Wakeups(ctx, quiet())
	requireWoken(t, own, "listening began")
	requireWoken(t, theirs, "listening began")
	startNotifier(t, writer)
	for i := range 3 {
		drain(own)
		drain(theirs)
		appendKey(t, writer, "org")
		select {
		case <-own:
		default:
			t.Fatal("no wake-up right after Append returned")
		}
		requireWoken(t, theirs, "append "+string(rune('1'+i))+", in the other store")
		select {
		case <-own:
			t.Fatal("woken again by the store's own NOTIFY")
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// TestNotifierIsSilentWhileNoOtherProcessListens: a store whose readers are
// the only ones listening sends no NOTIFY; once another process listens, its
// readers are woken by the store's commits.
func TestNotifierIsSilentWhileNoOtherProcessListens(t *testing.T) {
	t.Parallel()
	stores := processes(t, 2)
	writer := stores[0]
	reg := prometheus.NewRegistry()
	require.NoError(t, writer.Register(reg))
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	own := writer.Wakeups(ctx, quiet())
	requireWoken(t, own, "listening began")
	startNotifier(t, writer)
	for range 3 {
		appendKey(t, writer, "org")
		requireWoken(t, own, "an append")
	}
	time.Sleep(300 * time.Millisecond)
	require.Zero(t, counterValue(t, reg, "keyledger_commit_notifies_total"), "NOTIFYs sent with no other listener")

	// Another process listens: within about a second the commits reach it.
	theirs := stores[1].Wakeups(ctx, quiet())
	requireWoken(t, theirs, "listening began")
	drain(theirs)
	deadline := time.Now().Add(wakeBound)
	for notified := false; !notified; {
		require.True(t, time.Now().Before(deadline), "the other process was never woken by a NOTIFY")
		appendKey(t, writer, "org")
		select {
		case <-theirs:
			notified = counterValue(t, reg, "keyledger_commit_notifies_total") > 0
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestWakeupsStopWithTheirContext: the LISTEN connection is given back when
// the context ends.
func TestWakeupsStopWithTheirContext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(testContext(t))
	ch := b.store.Wakeups(ctx, quiet())
	requireWoken(t, ch, "listening began")
	listeners := func() int {
		var n int
		require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query ILIKE 'LISTEN%'`).Scan(&n))
		return n
	}
	require.Equal(t, 1, listeners())
	cancel()
	waitFor(t, "the LISTEN session to end", func() bool { return listeners() == 0 })
}

// TestReadersOfOneStoreShareOneListenConnection: two readers of a store (a
// relay and a sealer) are both woken through one LISTEN connection, which
// ends when the last of them stops.
func TestReadersOfOneStoreShareOneListenConnection(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	writer := eventstore.New(pgtest.PoolFor(t, url, 4))
	readerPool := pgtest.PoolFor(t, url, 4)
	reader := eventstore.New(readerPool)
	listeners := func() int {
		var n int
		require.NoError(t, readerPool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query ILIKE 'LISTEN%'`).Scan(&n))
		return n
	}
	ctx := testContext(t)
	ctx1, stop1 := context.WithCancel(ctx)
	ctx2, stop2 := context.WithCancel(ctx)
	defer stop2()
	first, second := reader.Wakeups(ctx1, quiet()), reader.Wakeups(ctx2, quiet())
	requireWoken(t, first, "listening began")
	require.Equal(t, 1, listeners())

	nctx, stopNotifier := context.WithCancel(ctx)
	defer stopNotifier()
	go writer.RunNotifier(nctx, quiet())
	drain(first)
	drain(second)
	appendKey(t, writer, "org")
	requireWoken(t, first, "another process's append (first reader)")
	requireWoken(t, second, "another process's append (second reader)")

	stop1()
	drain(second)
	appendKey(t, writer, "org")
	requireWoken(t, second, "another process's append, the first reader gone")
	require.Equal(t, 1, listeners())
	stop2()
	waitFor(t, "the LISTEN session to end", func() bool { return listeners() == 0 })
}
