package coalesce_test

import (
	"context"
	"sync"
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
	wg.Go(func() {
		v, err := g.Do(context.Background(), 100)
		require.NoError(t, err)
		results[0] = v
	})
	require.Eventually(t, func() bool { return len(d.sizes()) == 1 }, 5*time.Second, time.Millisecond)
	for i := 1; i <= 20; i++ {
		wg.Go(func() {
			v, err := g.Do(context.Background(), i)
			require.NoError(t, err)
			results[i] = v
		})
	}
	time.Sleep(50 * time.Millisecond) // let them queue
	close(d.gate)
	wg.Wait()

	require.Equal(t, 200, results[0])
	for i := 1; i <= 20; i++ {
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
	require.Equal(t, []int{1, 8, 8, 4}, sizes, "the queued calls went in full batches")
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
	go func() { v, err := g.Do(leaving, "leaving"); left <- answer{v, err} }()
	go func() { v, err := g.Do(context.Background(), "staying"); stayed <- answer{v, err} }()
	time.Sleep(50 * time.Millisecond)
	cancelBlocker() // its batch had one caller: it is cancelled
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
