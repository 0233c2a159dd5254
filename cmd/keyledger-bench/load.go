package main

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// loadRun is the outcome of one closed-loop load: clients concurrent clients,
// each sending its next request as soon as the previous one is answered.
type loadRun struct {
	label     string
	clients   int
	wall      time.Duration
	requests  int
	ok        int
	failures  map[string]int             // by status code or error text
	latencies []time.Duration            // of successful requests
	tagged    map[string][]time.Duration // successful latencies by tag, if the load tags them
	pgCPU     time.Duration              // CPU time of the Postgres backends serving it, if measurable
	procCPU   time.Duration              // CPU time of this process meanwhile (see processCPU)
}

// record counts one operation: its latency if it succeeded, its error if
// not.
func (r *loadRun) record(latency time.Duration, err error) {
	r.requests++
	if err != nil {
		r.failures[err.Error()]++
		return
	}
	r.ok++
	r.latencies = append(r.latencies, latency)
}

// recordResult counts one vegeta result, a success if it is the success
// status without error, and reports whether it was.
func (r *loadRun) recordResult(res *vegeta.Result, success int) bool {
	if int(res.Code) == success && res.Error == "" {
		r.record(res.Latency, nil)
		return true
	}
	r.requests++
	if res.Code != 0 {
		r.failures["HTTP "+strconv.Itoa(int(res.Code))+problemDetail(res.Body)]++
	} else {
		r.failures[res.Error]++
	}
	return false
}

// pgCPUPerOp is the Postgres backends' CPU time per successful operation, in
// microseconds; 0 when Postgres is not on this machine.
func (r *loadRun) pgCPUPerOp() float64 {
	if r.ok == 0 {
		return 0
	}
	return round(float64(r.pgCPU.Microseconds())/float64(r.ok), 1)
}

// procCPUPerOp is this process's CPU time per successful operation, in
// microseconds: the service's and the load generator's (or the baseline
// client's) together; 0 when not measured.
func (r *loadRun) procCPUPerOp() float64 {
	if r.ok == 0 {
		return 0
	}
	return round(float64(r.procCPU.Microseconds())/float64(r.ok), 1)
}

// rate is successful operations per second of wall time.
func (r *loadRun) rate() float64 {
	if r.wall <= 0 {
		return 0
	}
	return float64(r.ok) / r.wall.Seconds()
}

func (r *loadRun) errors() int { return r.requests - r.ok }

// pct returns the q-quantile (0 < q <= 1) of the successful latencies.
func (r *loadRun) pct(q float64) time.Duration { return percentile(r.latencies, q) }

// percentile returns the nearest-rank q-quantile of ds, sorting ds.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	if !slices.IsSorted(ds) {
		slices.Sort(ds)
	}
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// failureSummary lists the failures, most frequent first.
func (r *loadRun) failureSummary() string {
	if len(r.failures) == 0 {
		return "none"
	}
	keys := slices.Collect(maps.Keys(r.failures))
	sort.Slice(keys, func(i, j int) bool { return r.failures[keys[i]] > r.failures[keys[j]] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%dx %s", r.failures[k], k))
	}
	return strings.Join(parts, "; ")
}

// ms is a duration in milliseconds, for printing and JSON.
func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }

// httpLoad describes a closed-loop HTTP load.
type httpLoad struct {
	label   string
	clients int
	targets vegeta.Targeter
	// success is the one status code counted as a success.
	success int
	// tag, if set, groups successful latencies (by search term, say).
	tag func(*vegeta.Result) string
}

// newHTTPClient returns a client that keeps one connection per concurrent
// client open to a loopback server (loadTransport), and gives each request
// 30 s. The timeout is the transport's, not the Client's: a Client with a
// Timeout over a transport other than net/http's starts a goroutine per
// request to enforce it.
func newHTTPClient(clients int) *http.Client {
	return &http.Client{
		Transport:     newLoadTransport(clients*2, 30*time.Second),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// side is one side of a comparison: it runs its load for d and reports it.
type side func(ctx context.Context, d time.Duration) *loadRun

// compare measures a beside its baseline base: after a warm-up of each, it
// alternates them for --rounds rounds (a then base, then base then a, ...)
// of --duration/--rounds each, so that each gets --duration in all and
// whatever else the machine does at the time weighs on both alike. The CPU
// profile, if asked for, covers the measured rounds of both sides.
//
// Around each slice it reads the CPU time of db's Postgres backends, so that
// each side is charged what Postgres spent serving it (the other side's
// backends are idle meanwhile), and this process's own.
func (b *bench) compare(ctx context.Context, name string, db *database, a, base side) (ra, rb *loadRun) {
	if w := b.cfg.warmup; w > 0 {
		a(ctx, w)
		base(ctx, w)
	}
	slice := b.cfg.duration / time.Duration(b.cfg.rounds)
	measure := func(s side) *loadRun {
		before, procBefore := db.backendCPU(ctx), processCPU()
		r := s(ctx, slice)
		r.pgCPU = max(0, db.backendCPU(ctx)-before)
		r.procCPU = max(0, processCPU()-procBefore)
		return r
	}
	stop := b.profile(name)
	defer stop()
	for i := range b.cfg.rounds {
		if ctx.Err() != nil {
			break
		}
		if i%2 == 0 {
			ra = ra.merge(measure(a))
			rb = rb.merge(measure(base))
		} else {
			rb = rb.merge(measure(base))
			ra = ra.merge(measure(a))
		}
	}
	return ra, rb
}

// merge adds o's measurements to r's; a nil r takes o as it is.
func (r *loadRun) merge(o *loadRun) *loadRun {
	if r == nil {
		return o
	}
	r.wall += o.wall
	r.pgCPU += o.pgCPU
	r.procCPU += o.procCPU
	r.requests += o.requests
	r.ok += o.ok
	for k, v := range o.failures {
		r.failures[k] += v
	}
	r.latencies = append(r.latencies, o.latencies...)
	for k, v := range o.tagged {
		r.tagged[k] = append(r.tagged[k], v...)
	}
	return r
}

// httpSide is a closed-loop HTTP load with vegeta at an unbounded rate
// (Rate{Freq: 0}) and exactly l.clients workers: l.clients clients, each
// waiting for its answer before it sends again. Its connections stay open
// from one round to the next.
func httpSide(l httpLoad) side {
	client := newHTTPClient(l.clients)
	return func(ctx context.Context, d time.Duration) *loadRun {
		return attack(ctx, client, l, d)
	}
}

func attack(ctx context.Context, client *http.Client, l httpLoad, d time.Duration) *loadRun {
	n := uint64(l.clients)
	atk := vegeta.NewAttacker(vegeta.Client(client), vegeta.Workers(n), vegeta.MaxWorkers(n), vegeta.MaxBody(-1))
	r := &loadRun{label: l.label, clients: l.clients, failures: map[string]int{}}
	if l.tag != nil {
		r.tagged = map[string][]time.Duration{}
	}
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	start := time.Now()
	for res := range atk.Attack(l.targets, vegeta.Rate{Freq: 0}, d, l.label) {
		if r.recordResult(res, l.success) && l.tag != nil {
			t := l.tag(res)
			r.tagged[t] = append(r.tagged[t], res.Latency)
		}
	}
	r.wall = time.Since(start)
	return r
}

// problemDetail extracts a short hint from an error body, for the report.
func problemDetail(body []byte) string {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return ""
	}
	if i := strings.Index(s, `"detail":"`); i >= 0 {
		s = s[i+len(`"detail":"`):]
		if j := strings.IndexByte(s, '"'); j >= 0 {
			s = s[:j]
		}
	}
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return " (" + s + ")"
}

// loopSide runs op from clients goroutines, each calling it again as soon
// as it returns.
func loopSide(label string, clients int, op func(context.Context) error) side {
	return func(ctx context.Context, d time.Duration) *loadRun {
		return closedLoop(ctx, label, clients, d, op)
	}
}

func closedLoop(ctx context.Context, label string, clients int, d time.Duration, op func(context.Context) error) *loadRun {
	r := &loadRun{label: label, clients: clients, failures: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := &loadRun{failures: map[string]int{}}
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t0 := time.Now()
				err := op(ctx)
				mine.record(time.Since(t0), err)
			}
			mu.Lock()
			defer mu.Unlock()
			r.merge(mine)
		}()
	}
	wg.Wait()
	r.wall = time.Since(start)
	return r
}

// profile starts a CPU profile of the whole process into
// <--profile-dir>/<name>.cpu.pprof, and returns the function that stops it
// and writes the heap profile as it is then (after a collection, so that its
// in-use figures are the live heap's) to <name>.heap.pprof.
func (b *bench) profile(name string) func() {
	if b.cfg.profileDir == "" {
		return func() {}
	}
	if err := os.MkdirAll(b.cfg.profileDir, 0o755); err != nil {
		fmt.Fprintf(b.progress, "bench: profile: %v\n", err)
		return func() {}
	}
	path := filepath.Join(b.cfg.profileDir, name+".cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(b.progress, "bench: profile: %v\n", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(b.progress, "bench: profile: %v\n", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		fmt.Fprintf(b.progress, "bench: CPU profile written to %s (go tool pprof -top %s)\n", path, path)
		heap := filepath.Join(b.cfg.profileDir, name+".heap.pprof")
		runtime.GC()
		if err := writeProfile(heap, "heap"); err != nil {
			fmt.Fprintf(b.progress, "bench: profile: %v\n", err)
			return
		}
		fmt.Fprintf(b.progress, "bench: heap profile written to %s (go tool pprof -sample_index=inuse_space -top %s)\n", heap, heap)
	}
}

// writeProfile writes the named runtime/pprof profile to path.
func writeProfile(path, name string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// forEach calls f(i) for every i below n from workers goroutines, and
// returns the first error, after which the others stop taking new work.
func forEach(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		firstErr error
		once     sync.Once
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
