package eventstore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
)

const leaderInterval = 200 * time.Millisecond

// candidate is one process competing for the lead with eventstore.Lead.
type candidate struct {
	name    string
	cancel  context.CancelFunc
	done    chan struct{}
	leading atomic.Bool
	terms   atomic.Int32 // leaderships begun
	ended   atomic.Int32 // work functions whose context was cancelled
}

// election records how many candidates work at once.
type election struct {
	mu      sync.Mutex
	working int
	most    int
}

func (e *election) enter() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.working++
	e.most = max(e.most, e.working)
}

func (e *election) leave() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.working--
}

func (e *election) maxConcurrent() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.most
}

// campaign starts a candidate on its own pool of the database; its work runs
// until its context is cancelled, or returns workErr at once if that is set.
func campaign(t *testing.T, url, name string, e *election, workErr error) *candidate {
	t.Helper()
	pool := pgxPool(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{name: name, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		eventstore.Lead(ctx, pool, "test", leaderInterval, slog.New(slog.DiscardHandler),
			func(leading bool) { c.leading.Store(leading) },
			func(ctx context.Context) error {
				c.terms.Add(1)
				e.enter()
				defer e.leave()
				if workErr != nil {
					return workErr
				}
				<-ctx.Done()
				c.ended.Add(1)
				return nil
			})
	}()
	t.Cleanup(c.stop)
	return c
}

func (c *candidate) stop() {
	c.cancel()
	<-c.done
}

func pgxPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func leaders(cs []*candidate) []*candidate {
	var out []*candidate
	for _, c := range cs {
		if c.leading.Load() {
			out = append(out, c)
		}
	}
	return out
}

// TestLeadElectsOneLeaderAmongCandidates: of several processes sharing a
// database, exactly one runs the work at a time.
func TestLeadElectsOneLeaderAmongCandidates(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	var e election
	var cs []*candidate
	for i := range 4 {
		cs = append(cs, campaign(t, url, fmt.Sprint(i), &e, nil))
	}
	waitFor(t, "a leader", func() bool { return len(leaders(cs)) == 1 })
	// Many leadership intervals later: still one, the same.
	first := leaders(cs)[0]
	deadline := time.Now().Add(10 * leaderInterval)
	for time.Now().Before(deadline) {
		require.Equal(t, []*candidate{first}, leaders(cs))
		time.Sleep(leaderInterval / 5)
	}
	require.Equal(t, 1, e.maxConcurrent())
	require.Equal(t, int32(1), first.terms.Load())
}

// TestLeadTakesOverWhenTheLeaderStops: when the leader's context ends, its
// work is cancelled and another candidate leads within a few intervals; the
// successor's work never overlaps the predecessor's.
func TestLeadTakesOverWhenTheLeaderStops(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	var e election
	cs := []*candidate{campaign(t, url, "a", &e, nil), campaign(t, url, "b", &e, nil), campaign(t, url, "c", &e, nil)}
	for round := range 2 {
		waitFor(t, "a leader", func() bool { return len(leaders(cs)) == 1 })
		old := leaders(cs)[0]
		old.stop()
		require.Equal(t, int32(1), old.ended.Load(), "round %d: the leader's work was cancelled", round)
		require.False(t, old.leading.Load())
		start := time.Now()
		rest := make([]*candidate, 0, len(cs)-1)
		for _, c := range cs {
			if c != old {
				rest = append(rest, c)
			}
		}
		cs = rest
		waitFor(t, "a new leader", func() bool { return len(leaders(cs)) == 1 })
		require.Less(t, time.Since(start), 10*time.Second)
	}
	require.Equal(t, 1, e.maxConcurrent())
}

// TestLeadStepsDownWhenItsConnectionIsKilled: a leader whose database
// session ends (here: pg_terminate_backend on the session that holds the
// advisory lock) cancels its work, and a leader is elected again. The dead
// leader may overlap its successor for up to one interval (the time it
// takes to notice), as Lead documents; this test does not forbid it.
func TestLeadStepsDownWhenItsConnectionIsKilled(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	admin := pgxPool(t, url)
	var e election
	cs := []*candidate{campaign(t, url, "a", &e, nil), campaign(t, url, "b", &e, nil)}
	waitFor(t, "a leader", func() bool { return len(leaders(cs)) == 1 })
	old := leaders(cs)[0]

	holder := lockHolder(t, admin)
	var killed bool
	require.NoError(t, admin.QueryRow(context.Background(), `SELECT pg_terminate_backend($1)`, holder).Scan(&killed))
	require.True(t, killed)

	waitFor(t, "the killed leader's work to be cancelled", func() bool { return old.ended.Load() == 1 })
	waitFor(t, "a leader again", func() bool {
		var terms int32
		for _, c := range cs {
			terms += c.terms.Load()
		}
		return terms == 2 && len(leaders(cs)) == 1
	})
	require.NotEqual(t, holder, lockHolder(t, admin), "the lock is held by a new session")
}

// TestLeadCompetesAgainWhenWorkFails: work that returns an error gives up
// the lead; the process competes again and leads again.
func TestLeadCompetesAgainWhenWorkFails(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	var e election
	c := campaign(t, url, "a", &e, errors.New("boom"))
	waitFor(t, "a second leadership", func() bool { return c.terms.Load() >= 2 })
	c.stop()
	require.False(t, c.leading.Load())
}

// lockHolder returns the pid of the session holding the database's advisory
// lock.
func lockHolder(t *testing.T, pool *pgxpool.Pool) int32 {
	t.Helper()
	var pid int32
	waitFor(t, "the advisory lock to be held", func() bool {
		err := pool.QueryRow(context.Background(), `SELECT pid FROM pg_locks
			WHERE locktype = 'advisory' AND granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&pid)
		return err == nil
	})
	return pid
}
