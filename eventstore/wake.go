package eventstore

import (
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// CommitChannel is the LISTEN/NOTIFY channel on which appends are announced
// to readers in other processes.
const CommitChannel = "keyledger_events"

// commits tells the ledger's readers that events have committed. A wake-up
// is a hint, never a delivery: readers still read the ledger in order, and
// still poll now and then in case a hint was lost.
//
// The NOTIFY is sent after COMMIT, from a goroutine of its own, and many
// commits close together share one: a NOTIFY inside the appending
// transaction would make Postgres take a database-wide lock at commit and
// serialize every append's WAL flush behind it. Its payload is the store's
// own random name, by which the store's LISTEN connection recognizes, and
// ignores, the NOTIFYs it sent itself: its readers were woken at the commit,
// and woken again they would read the ledger again for nothing.
type commits struct {
	mu      sync.Mutex
	local   map[chan struct{}]struct{}
	pending chan struct{}
	self    string // the NOTIFY payload
	// listenerPID is the backend of the store's LISTEN connection, 0 when
	// it has none.
	listenerPID atomic.Uint32
	// stopListening ends the LISTEN connection that wakes local for
	// commits of other processes; nil while local is empty.
	stopListening context.CancelFunc
}

func newCommits() *commits {
	return &commits{local: map[chan struct{}]struct{}{}, pending: make(chan struct{}, 1), self: rand.Text()}
}

// signal wakes this process's readers at once and asks for one NOTIFY.
func (c *commits) signal() {
	c.wakeLocal()
	poke(c.pending)
}

// wakeLocal wakes this process's readers.
func (c *commits) wakeLocal() {
	c.mu.Lock()
	for ch := range c.local {
		poke(ch)
	}
	c.mu.Unlock()
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// RunNotifier sends the NOTIFYs that announce this process's appends to
// other processes, until ctx ends. Without it, only readers in this process
// wake on commit.
//
// Under a steady stream of commits it sends one NOTIFY per notifyEvery at
// most: each wakes every listening backend, and at a few hundred commits a
// second they cost Postgres more CPU than the relay's reads (the generate
// benchmark ran 7 to 10% faster without them). A commit after a quiet spell
// is announced at once.
//
// It sends none while no other session listens on CommitChannel, as when
// this process is the only one (its own readers are woken at the commit):
// that too was 4% of the generate benchmark. It looks for listeners in
// pg_stat_activity at most once per listenersEvery, so a reader in a process
// that has just begun to listen may wait that long, on top of the wake-up it
// gets when it begins, before the NOTIFYs reach it; until then it still
// polls.
func (s *Store) RunNotifier(ctx context.Context, log *slog.Logger) {
	var last, looked time.Time
	var others bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.commits.pending:
		}
		if wait := notifyEvery - time.Since(last); wait > 0 {
			if sleep(ctx, wait); ctx.Err() != nil {
				return
			}
		}
		if time.Since(looked) >= listenersEvery {
			others, looked = s.othersListen(ctx, log), time.Now()
		}
		if !others {
			continue
		}
		last = time.Now()
		if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, CommitChannel, s.commits.self); err != nil && ctx.Err() == nil {
			log.Warn("cannot announce committed events", "err", err)
			continue
		}
		s.notifies.Inc()
	}
}

// notifyEvery is the least time between two NOTIFYs of one process: what a
// reader in another process may wait, at most, beyond the commit.
const notifyEvery = 2 * time.Millisecond

// listenersEvery is how often, at most, the notifier looks for sessions
// listening on CommitChannel.
const listenersEvery = time.Second

// othersListen tells whether a session other than this store's own LISTEN
// connection listens on CommitChannel, or might: a session named
// listenerName (a store's LISTEN connection), one whose last statement was
// the LISTEN (a store of an older version, another tool), or one whose
// activity this session may not see (another role; track_activities off).
// When it cannot tell, it says yes.
func (s *Store) othersListen(ctx context.Context, log *slog.Logger) bool {
	var yes bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> $1
		  AND (application_name = $2 OR query IN ($3, '<insufficient privilege>') OR state = 'disabled'))`,
		s.commits.listenerPID.Load(), listenerName, "LISTEN "+CommitChannel).Scan(&yes)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("cannot look for other processes listening for commits; announcing them anyway", "err", err)
		}
		return true
	}
	return yes
}

// listenerName is the application_name of a store's LISTEN connection, by
// which the notifiers of other processes find it.
const listenerName = "keyledger-listen"

// Wakeups returns a channel that receives soon after events commit: at once
// for appends made through this store, and through LISTEN for appends made
// by other processes. It holds one pending wake-up at most; several commits
// may give one. It also receives after the LISTEN connection is
// re-established, since a notice may have been missed meanwhile. It stops
// when ctx ends.
//
// The store's readers (a relay, a sealer) share one LISTEN connection, open
// while any of them waits: each NOTIFY wakes every listening backend.
func (s *Store) Wakeups(ctx context.Context, log *slog.Logger) <-chan struct{} {
	ch := make(chan struct{}, 1)
	c := s.commits
	c.mu.Lock()
	c.local[ch] = struct{}{}
	if c.stopListening == nil {
		lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		c.stopListening = stop
		go s.listen(lctx, log)
	}
	c.mu.Unlock()
	context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.local, ch)
		if len(c.local) == 0 && c.stopListening != nil {
			c.stopListening()
			c.stopListening = nil
		}
	})
	return ch
}

// listen wakes the store's readers for every NOTIFY of another store until
// ctx ends.
func (s *Store) listen(ctx context.Context, log *slog.Logger) {
	for ctx.Err() == nil {
		cfg := s.pool.Config().ConnConfig.Copy()
		if cfg.RuntimeParams == nil {
			cfg.RuntimeParams = map[string]string{}
		}
		cfg.RuntimeParams["application_name"] = listenerName
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			_, err = conn.Exec(ctx, `LISTEN `+CommitChannel)
		}
		if err == nil {
			s.commits.listenerPID.Store(conn.PgConn().PID())
			s.commits.wakeLocal() // something may have committed while not listening
			for err == nil {
				var n *pgconn.Notification
				if n, err = conn.WaitForNotification(ctx); err == nil && n.Payload != s.commits.self {
					s.commits.wakeLocal()
				}
			}
		}
		s.commits.listenerPID.Store(0)
		if conn != nil {
			closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(closeCtx)
			cancel()
		}
		if ctx.Err() == nil {
			log.Warn("listening for commits: reconnecting", "err", err)
			sleep(ctx, time.Second)
		}
	}
}
