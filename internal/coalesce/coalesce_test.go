package coalesce_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/internal/coalesce"
)

// double answers each request with twice its value, and records the size of
// every batch.
type double struct {
	mu      sync.Mutex
	batches []int
	gate    chan struct{} // if set, each batch waits for it
}

func (d *double) run(ctx context.Context, reqs []int) []coalesce.Result[int] {
	d.mu.Lock()
	d.batches = append(d.batches, len(reqs))
	d.mu.Unlock()
	if d.gate != nil {
		<-d.gate
	}
	out := make([]coalesce.Result[int], len(reqs))
	for i, r := range reqs {
		out[i] = coalesce.Result[int]{Value: 2 * r}
	}
	return out
}

func (d *double) sizes() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]int(nil), d.batches...)
}

func TestALoneCallRunsAloneAndAtOnce(t *testing.T) {
	t.Parallel()
	d := &double{}
	g := coalesce.New(2, 16, d.run)
	for i := range 5 {
		v, err := g.Do(context.Background(), i)
		require.NoError(t, err)
		require.Equal(t, 2*i, v)
	}
	require.Equal(t, []int{1, 1, 1, 1, 1}, d.sizes())
}

func TestCallsWaitingWhileTheWorkerIsBusyShareABatch(t *testing.T) {
	t.Parallel()
	d := &double{gate: make(chan struct{})}
	g := coalesce.New(1, 8, d.run)

	// The first call holds the only worker; twenty more queue behind it.
	var wg sync.WaitGroup
	results := make([]int, 21)
	errs := make([]error, 21)
	wg.Go(func() { results[0], errs[0] = g.Do(context.Background(), 100) })
	require.Eventually(t, func() bool { return len(d.sizes()) == 1 }, 5*time.Second, time.Millisecond)
	var calling atomic.Int32
	for i := 1; i <= 20; i++ {
		wg.Go(func() {
			calling.Add(1)
			results[i], errs[i] = g.Do(context.Background(), i)
		})
	}
	require.Eventually(t, func() bool { return calling.Load() == 20 }, 5*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // from calling Do to waiting in it
	close(d.gate)
	wg.Wait()

	require.NoError(t, errs[0])
	require.Equal(t, 200, results[0])
	for i := 1; i <= 20; i++ {
		require.NoError(t, errs[i])
		require.Equal(t, 2*i, results[i], "call %d got another call's answer", i)
	}
	sizes := d.sizes()
	require.Equal(t, 1, sizes[0])
	total := 0
	for _, n := range sizes[1:] {
		require.LessOrEqual(t, n, 8, "a batch over the maximum")
		total += n
	}
	require.Equal(t, 20, total)
	require.LessOrEqual(t, len(sizes[1:]), 4, "the queued calls did not share batches: %v", sizes)
}

func TestACallWithdrawnBeforeAWorkerTakesItIsNotRun(t *testing.T) {
	t.Parallel()
	d := &double{gate: make(chan struct{})}
	g := coalesce.New(1, 8, d.run)
	go func() { _, _ = g.Do(context.Background(), 1) }()
	require.Eventually(t, func() bool { return len(d.sizes()) == 1 }, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := g.Do(ctx, 2)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	close(d.gate)
	_, err = g.Do(context.Background(), 3)
	require.NoError(t, err)
	require.Equal(t, []int{1, 1}, d.sizes(), "the withdrawn call ran")
}

// TestABatchIsCancelledOnlyWhenAllItsCallersHaveGone: a caller that gives up
// still hears its batch's outcome, and the batch goes on while another
// caller waits for it.
func TestABatchIsCancelledOnlyWhenAllItsCallersHaveGone(t *testing.T) {
	t.Parallel()
	started := make(chan int, 4)
	release := make(chan struct{})
	g := coalesce.New(1, 8, func(ctx context.Context, reqs []string) []coalesce.Result[string] {
		started <- len(reqs)
		out := make([]coalesce.Result[string], len(reqs))
		select {
		case <-release:
			for i := range out {
				out[i].Value = "done"
			}
		case <-ctx.Done():
			for i := range out {
				out[i].Err = ctx.Err()
			}
		}
		return out
	})

	// Two callers share a batch behind a first, blocking one.
	blockerCtx, cancelBlocker := context.WithCancel(context.Background())
	blocker := make(chan error, 1)
	go func() { _, err := g.Do(blockerCtx, "blocker"); blocker <- err }()
	require.Equal(t, 1, <-started)
	leaving, cancelLeaving := context.WithCancel(context.Background())
	type answer struct {
		v   string
		err error
	}
	left, stayed := make(chan answer, 1), make(chan answer, 1)
	var calling atomic.Int32
	go func() { calling.Add(1); v, err := g.Do(leaving, "leaving"); left <- answer{v, err} }()
	go func() { calling.Add(1); v, err := g.Do(context.Background(), "staying"); stayed <- answer{v, err} }()
	require.Eventually(t, func() bool { return calling.Load() == 2 }, 5*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // from calling Do to waiting in it
	cancelBlocker()                    // its batch had one caller: it is cancelled
	require.ErrorIs(t, <-blocker, context.Canceled)
	require.Equal(t, 2, <-started)

	// One of the two leaves: the batch goes on, and the leaver waits for it.
	cancelLeaving()
	select {
	case a := <-left:
		t.Fatalf("a caller left its batch before the batch's outcome: %+v", a)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	require.Equal(t, answer{"done", nil}, <-left)
	require.Equal(t, answer{"done", nil}, <-stayed)
}

func TestAPanicInTheBatchFunctionIsEveryCallsError(t *testing.T) {
	t.Parallel()
	g := coalesce.New(1, 8, func(ctx context.Context, reqs []int) []coalesce.Result[int] {
		if reqs[0] == 0 {
			panic("boom")
		}
		return make([]coalesce.Result[int], len(reqs)-1) // one short
	})
	_, err := g.Do(context.Background(), 0)
	require.ErrorContains(t, err, "boom")
	_, err = g.Do(context.Background(), 1)
	require.ErrorContains(t, err, "1 calls")
	// The worker gave its slot back: the group still runs calls.
	_, err = g.Do(context.Background(), 0)
	require.Error(t, err)
}

func TestACallWhoseContextHasEndedIsNeverRun(t *testing.T) {
	t.Parallel()
	d := &double{}
	g := coalesce.New(1, 8, d.run)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 {
		_, err := g.Do(ctx, 1)
		require.True(t, errors.Is(err, context.Canceled))
	}
	require.Empty(t, d.sizes())
}
