package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/keyledger/keyledger/domain"
)

const (
	// propagationTargetMs is issue 3's bound: p99 from the RevokeKey
	// response to the gateway's refusal.
	propagationTargetMs = 10.0
	// propagationLoadKeys are the valid keys that the background load
	// presents; the revoked keys are others.
	propagationLoadKeys = 1000
	// propagationLimit is how long a revocation may take to reach the
	// client before it counts as failed.
	propagationLimit = 10 * time.Second
	// pollPause is the pause between two polls of the client: short, but
	// not a spin that would take a core from the relay and the follower.
	pollPause = 20 * time.Microsecond
	// floorMessages is the least count of messages of the NATS floor, and
	// floorSize their size.
	floorMessages = 1000
	floorSize     = 300
)

// propagation measures how long a revocation takes to reach a gateway
// client, beside the core NATS floor, under a background verification load.
func (b *bench) propagation(ctx context.Context, w io.Writer) (result, error) {
	cfg := b.cfg
	n := cfg.propagationRevocations
	floorN := max(floorMessages, n)
	fmt.Fprintf(w, "\n== propagation: RevokeKey HTTP response -> gateway client refuses the key, %d revocations one at a time, under %d req/s of GET /v1/verify and %d cached Verify/s on the client; baseline: core NATS publish -> subscriber of a %d-byte message, %d messages\n",
		n, cfg.propagationVerifyRate, cfg.propagationGatewayRate, floorSize, floorN)
	load := loadAvg()
	fmt.Fprintf(w, "  (load average %.2f at start)\n", load)

	keys, err := b.loadGatewayKeys(ctx, "propagation", n+propagationLoadKeys)
	if err != nil {
		return result{}, err
	}
	revoked, valid := keys[:n], keys[n:]
	svc, gw, err := b.servedGateway(ctx, "propagation", keys)
	if err != nil {
		return result{}, err
	}
	defer svc.close()
	defer gw.close()

	floor, err := newNATSFloor(b.nats.url, "_"+b.nats.notices.Prefix+".floor")
	if err != nil {
		return result{}, err
	}
	defer floor.close()

	bg := b.startBackground(svc, gw, valid)
	revoker := &revoker{svc: svc, gw: gw, http: newHTTPClient(1)}
	got := &loadRun{label: "revocation -> gateway refusal", clients: 1, failures: map[string]int{}}
	base := &loadRun{label: fmt.Sprintf("core NATS pub -> sub, %d B", floorSize), clients: 1, failures: map[string]int{}}
	callsBefore := gw.calls.n.Load()
	firstCheck := 0
	revokeSlice := func(from, to int) {
		t0 := time.Now()
		for _, k := range revoked[from:to] {
			if ctx.Err() != nil {
				break
			}
			d, first, err := revoker.revoke(ctx, k)
			got.record(d, err)
			if err == nil && first {
				firstCheck++
			}
		}
		got.wall += time.Since(t0)
	}
	floorSlice := func(count int) {
		t0 := time.Now()
		for range count {
			if ctx.Err() != nil {
				break
			}
			d, err := floor.one(ctx)
			base.record(d, err)
		}
		base.wall += time.Since(t0)
	}
	// As compare does: the measurement and its baseline alternate, so that
	// whatever else the machine does weighs on both.
	stopProfile := b.profile("propagation")
	rounds := min(cfg.rounds, n)
	for r := range rounds {
		from, to := r*n/rounds, (r+1)*n/rounds
		msgs := (r+1)*floorN/rounds - r*floorN/rounds
		if r%2 == 0 {
			floorSlice(msgs)
			revokeSlice(from, to)
		} else {
			revokeSlice(from, to)
			floorSlice(msgs)
		}
		fmt.Fprintf(b.progress, "propagation: round %d/%d: %d revocations, %d floor messages\n", r+1, rounds, to-from, msgs)
	}
	stopProfile()
	calls := gw.calls.n.Load() - callsBefore
	bgHTTP, bgGateway := bg.stop()
	if err := ctx.Err(); err != nil {
		return result{}, err
	}

	printLatency(w, got)
	printLatency(w, base)
	fmt.Fprintf(w, "  revocation latency distribution: %s\n", histogram(got.latencies))
	fmt.Fprintf(w, "  %d of %d revocations already refused at the first check; the client asked the service %d times meanwhile (0: every refusal came from a notice)\n",
		firstCheck, got.ok, calls)
	fmt.Fprintf(w, "  background GET /v1/verify: %.1f req/s, p50 %.3f ms, p99 %.3f ms (%d ok, %d errors); cached Verify on the client: %.0f/s (%d not valid)\n",
		bgHTTP.rate(), ms(bgHTTP.pct(0.50)), ms(bgHTTP.pct(0.99)), bgHTTP.ok, bgHTTP.errors(), bgGateway.rate(), bgGateway.errors())
	if bgHTTP.errors() > 0 {
		fmt.Fprintf(w, "    errors: %s\n", bgHTTP.failureSummary())
	}

	r := measured("propagation", "ms", "p99 <= 10 ms from the RevokeKey response to the gateway client's refusal, over every revocation; for latency the ratio is value over the NATS floor (lower is better)",
		got, base, 1, got.wall+base.wall, load)
	r.DurationS = round(r.DurationS, 2)
	r.Value, r.Baseline, r.Target = r.P99ms, r.BaselineP99ms, propagationTargetMs
	r.Ratio = ratio(r.Value, r.Baseline)
	r.MaxMs, r.BaselineMaxMs = ms(percentile(got.latencies, 1)), ms(percentile(base.latencies, 1))
	r.BackgroundVerifyRPS, r.BackgroundVerifyP99 = round(bgHTTP.rate(), 1), ms(bgHTTP.pct(0.99))
	r.BackgroundGatewayOps = round(bgGateway.rate(), 1)
	r.GatewayServiceCalls = &calls
	r.OK = got.ok == n && got.errors() == 0 && r.P99ms <= propagationTargetMs
	fmt.Fprintf(w, "  p99 %.3f ms (target <= %.0f ms): %s; %.1f x the NATS floor's p99 (%.3f ms)\n",
		r.P99ms, propagationTargetMs, verdict(r.OK), r.Ratio, r.BaselineP99ms)
	return r, nil
}

// printLatency prints a run whose figure is its latency.
func printLatency(w io.Writer, r *loadRun) {
	fmt.Fprintf(w, "  %-34s p50 %8.3f ms  p99 %8.3f ms  max %8.3f ms  (%d ok, %d errors, %.1fs)\n",
		r.label, ms(r.pct(0.50)), ms(r.pct(0.99)), ms(r.pct(1)), r.ok, r.errors(), r.wall.Seconds())
	if r.errors() > 0 {
		fmt.Fprintf(w, "    errors: %s\n", r.failureSummary())
	}
}

// revoker revokes keys through the API and times their refusal by the
// gateway client.
type revoker struct {
	svc  *instance
	gw   *gatewayClient
	http *http.Client
}

// revoke revokes k and polls the client until it refuses k as revoked. It
// returns the time from the response's arrival to the refusal, zero if the
// first check already refused (first).
func (rv *revoker) revoke(ctx context.Context, k verifyKey) (d time.Duration, first bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rv.svc.URL+"/v1/orgs/"+k.org+"/keys/"+k.id+"/revoke",
		strings.NewReader(`{"reason":"bench: propagation"}`))
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Authorization", "Bearer "+rv.svc.Token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Actor", "bench@example.com")
	resp, err := rv.http.Do(req)
	if err != nil {
		return 0, false, err
	}
	answered := time.Now()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("revoke: HTTP %d%s", resp.StatusCode, problemDetail(body))
	}
	for first := true; ; first = false {
		v, err := rv.gw.client.Verify(ctx, k.secret, k.org)
		now := time.Now()
		switch {
		case err != nil:
			return 0, false, fmt.Errorf("gateway Verify: %w", err)
		case v.Reason == domain.ReasonRevoked:
			if first {
				return 0, true, nil
			}
			return now.Sub(answered), false, nil
		case !v.Valid():
			return 0, false, fmt.Errorf("gateway refused a revoked key as %q, not revoked", v.Reason)
		case now.Sub(answered) > propagationLimit:
			return 0, false, fmt.Errorf("gateway still accepted a key %s after its revocation", propagationLimit)
		}
		pause(pollPause)
	}
}

// background is the verification load that runs while revocations are
// timed: GET /v1/verify on the service at a constant rate, and cached
// Verify calls on the gateway client.
type background struct {
	atk     *vegeta.Attacker
	http    chan *loadRun
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	gwOK    atomic.Int64
	gwBad   atomic.Int64
	started time.Time
}

func (b *bench) startBackground(svc *instance, gw *gatewayClient, keys []verifyKey) *background {
	rate := b.cfg.propagationVerifyRate
	bg := &background{
		atk:     vegeta.NewAttacker(vegeta.Client(newHTTPClient(64)), vegeta.MaxBody(-1)),
		http:    make(chan *loadRun, 1),
		started: time.Now(),
	}
	label := fmt.Sprintf("background GET /v1/verify @%d/s", rate)
	go func() {
		r := &loadRun{label: label, failures: map[string]int{}}
		start := time.Now()
		for res := range bg.atk.Attack(verifyTargeter(svc.URL, keys), vegeta.Rate{Freq: rate, Per: time.Second}, 0, label) {
			r.recordResult(res, http.StatusOK)
		}
		r.wall = time.Since(start)
		bg.http <- r
	}()
	ctx, cancel := context.WithCancel(context.Background())
	bg.cancel = cancel
	if gr := b.cfg.propagationGatewayRate; gr > 0 {
		// Two goroutines, each a burst every interval: per goroutine gr/2
		// calls a second.
		const goroutines = 2
		interval := max(time.Millisecond, time.Duration(goroutines*int64(time.Second)/int64(gr)))
		burst := max(1, int(int64(gr)*int64(interval)/int64(time.Second)/goroutines))
		for g := range goroutines {
			bg.wg.Go(func() {
				t := time.NewTicker(interval)
				defer t.Stop()
				i := g * len(keys) / goroutines
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
					for range burst {
						k := keys[i%len(keys)]
						i++
						if v, err := gw.client.Verify(ctx, k.secret, k.org); err == nil && v.Valid() {
							bg.gwOK.Add(1)
						} else if ctx.Err() == nil {
							bg.gwBad.Add(1)
						}
					}
				}
			})
		}
	}
	return bg
}

// stop ends the load and returns what each part did.
func (bg *background) stop() (httpRun, gateway *loadRun) {
	bg.atk.Stop()
	bg.cancel()
	bg.wg.Wait()
	httpRun = <-bg.http
	ok, bad := int(bg.gwOK.Load()), int(bg.gwBad.Load())
	gateway = &loadRun{label: "background cached Verify", ok: ok, requests: ok + bad, wall: time.Since(bg.started)}
	return httpRun, gateway
}

// natsFloor measures the core NATS floor: the time from publishing a
// message on one connection to its delivery to a subscriber on another, one
// message at a time.
type natsFloor struct {
	pub, sub *nats.Conn
	subject  string
	msg      []byte
	seq      uint64
	got      chan floorArrival
}

type floorArrival struct {
	seq uint64
	at  time.Time
}

func newNATSFloor(url, subject string) (*natsFloor, error) {
	f := &natsFloor{subject: subject, msg: make([]byte, floorSize), got: make(chan floorArrival, 16)}
	var err error
	if f.sub, err = nats.Connect(url, nats.Name("keyledger-bench-floor-sub")); err != nil {
		return nil, fmt.Errorf("NATS floor: %w", err)
	}
	if _, err = f.sub.Subscribe(subject, func(m *nats.Msg) {
		at := time.Now()
		if len(m.Data) >= 8 {
			f.got <- floorArrival{seq: binary.LittleEndian.Uint64(m.Data), at: at}
		}
	}); err != nil {
		f.sub.Close()
		return nil, fmt.Errorf("NATS floor: %w", err)
	}
	// The subscription is known to the server once the flush returns.
	if err = f.sub.Flush(); err != nil {
		f.sub.Close()
		return nil, fmt.Errorf("NATS floor: %w", err)
	}
	if f.pub, err = nats.Connect(url, nats.Name("keyledger-bench-floor-pub")); err != nil {
		f.sub.Close()
		return nil, fmt.Errorf("NATS floor: %w", err)
	}
	return f, nil
}

// one publishes a message and waits for its delivery.
func (f *natsFloor) one(ctx context.Context) (time.Duration, error) {
	f.seq++
	binary.LittleEndian.PutUint64(f.msg, f.seq)
	sent := time.Now()
	if err := f.pub.Publish(f.subject, f.msg); err != nil {
		return 0, err
	}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case a := <-f.got:
			if a.seq != f.seq {
				continue // a message given up on earlier
			}
			return a.at.Sub(sent), nil
		case <-timeout.C:
			return 0, errors.New("NATS floor: message not delivered within 5 s")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (f *natsFloor) close() {
	f.pub.Close()
	f.sub.Close()
}

// histogramBounds are the upper bounds of histogram's buckets.
var histogramBounds = []time.Duration{time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond}

// histogram counts ds by bucket, for a reader looking for where a tail
// comes from (a timer, a retry interval).
func histogram(ds []time.Duration) string {
	counts := make([]int, len(histogramBounds)+1)
	for _, d := range ds {
		i := 0
		for i < len(histogramBounds) && d >= histogramBounds[i] {
			i++
		}
		counts[i]++
	}
	var parts []string
	lower := "0"
	for i, c := range counts {
		if i < len(histogramBounds) {
			parts = append(parts, fmt.Sprintf("[%s, %s) %d", lower, histogramBounds[i], c))
			lower = histogramBounds[i].String()
		} else {
			parts = append(parts, fmt.Sprintf(">= %s %d", lower, c))
		}
	}
	return strings.Join(parts, ", ")
}
