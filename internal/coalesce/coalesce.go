// Package coalesce runs concurrent calls in batches: under load, one round
// trip to Postgres serves many callers, and alone a call runs as it would
// without it.
//
// A Group runs at most a few batches at a time. A call that finds a batch
// slot free starts a worker with it; a worker, when its batch is answered,
// takes every call waiting (up to a maximum) as its next batch, and ends when
// none is. Nothing waits to fill a batch: a batch is whatever queued while
// the workers were busy, so the batches grow with the load, and a lone call
// runs at once, alone. An idle Group holds no goroutine, so it needs no
// closing.
//
// A caller whose context ends before a worker takes its call withdraws it. A
// call taken into a batch is answered with the batch's outcome: the batch's
// context is cancelled only once every caller in it has gone, so a caller
// never hears "failed" for work that a batch it shared with others went on
// to commit.
package coalesce

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync/atomic"
)

// Result is the outcome of one call of a batch.
type Result[Res any] struct {
	Value Res
	Err   error
}

// Func runs a batch: it returns one Result per request, in order. Its
// context ends when every caller of the batch has gone.
type Func[Req, Res any] func(ctx context.Context, reqs []Req) []Result[Res]

// Group coalesces calls of one Func.
type Group[Req, Res any] struct {
	run   Func[Req, Res]
	max   int
	calls chan *call[Req, Res] // to a worker looking for its next batch
	slots chan struct{}        // one token per running worker
}

type call[Req, Res any] struct {
	ctx   context.Context
	req   Req
	reply chan Result[Res]
}

// New returns a Group that runs up to workers batches (at least one) at a
// time, each of up to maxBatch calls (at least one), with run.
func New[Req, Res any](workers, maxBatch int, run Func[Req, Res]) *Group[Req, Res] {
	return &Group[Req, Res]{
		run:   run,
		max:   max(1, maxBatch),
		calls: make(chan *call[Req, Res]),
		slots: make(chan struct{}, max(1, workers)),
	}
}

// Do runs req in a batch. If ctx ends before a worker takes it, Do returns
// ctx's error and req is not run. A panic in the batch function is every
// call's error.
func (g *Group[Req, Res]) Do(ctx context.Context, req Req) (Res, error) {
	var zero Res
	if err := ctx.Err(); err != nil { // select would pick at random among ready cases
		return zero, err
	}
	c := &call[Req, Res]{ctx: ctx, req: req, reply: make(chan Result[Res], 1)}
	select {
	case g.calls <- c:
	case g.slots <- struct{}{}:
		go g.work(c)
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	r := <-c.reply
	return r.Value, r.Err
}

// work runs batches, the first one starting with c, until no call waits;
// then it gives its slot back.
func (g *Group[Req, Res]) work(c *call[Req, Res]) {
	defer func() { <-g.slots }()
	batch := make([]*call[Req, Res], 0, g.max)
	reqs := make([]Req, 0, g.max)
	batch = append(batch, c)
	for {
	collect:
		for len(batch) < g.max {
			select {
			case c := <-g.calls:
				batch = append(batch, c)
			default:
				break collect
			}
		}
		reqs = reqs[:0]
		for _, c := range batch {
			reqs = append(reqs, c.req)
		}
		results := g.runBatch(batch, reqs)
		for i, c := range batch {
			c.reply <- results[i]
		}
		clear(batch)
		clear(reqs)
		batch = batch[:0]
		select {
		case c := <-g.calls:
			batch = append(batch, c)
		default:
			return
		}
	}
}

// runBatch runs one batch under a context that ends when the last of its
// callers' contexts does.
func (g *Group[Req, Res]) runBatch(batch []*call[Req, Res], reqs []Req) []Result[Res] {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var present atomic.Int64
	present.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, c := range batch {
		stops[i] = context.AfterFunc(c.ctx, func() {
			if present.Add(-1) == 0 {
				cancel()
			}
		})
	}
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	return g.runSafely(ctx, reqs)
}

// runSafely runs the batch function, turning a panic (or a wrong count of
// results) into an error for every call of the batch: it runs in a worker,
// where a panic would end the process rather than one request.
func (g *Group[Req, Res]) runSafely(ctx context.Context, reqs []Req) (results []Result[Res]) {
	defer func() {
		if p := recover(); p != nil {
			results = failAll[Res](len(reqs), fmt.Errorf("coalesce: batch function panicked: %v\n%s", p, debug.Stack()))
		}
	}()
	results = g.run(ctx, reqs)
	if len(results) != len(reqs) {
		return failAll[Res](len(reqs), fmt.Errorf("coalesce: the batch function returned %d results for %d calls", len(results), len(reqs)))
	}
	return results
}

func failAll[Res any](n int, err error) []Result[Res] {
	out := make([]Result[Res], n)
	for i := range out {
		out[i].Err = err
	}
	return out
}
