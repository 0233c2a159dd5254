package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/eventstore"
)

const (
	sealTarget        = 0.3
	sealTargetLagP99  = 1000.0 // ms
	auditVerifyTarget = 0.3
	// sealOrgs is how many organizations the seal data set's keys are
	// spread over, so that the organization chains are realistic.
	sealOrgs = 1000
)

// sealDataset is the scratch database's ledger of --seal-events events,
// loaded once per run and shared by the seal and audit-verify scenarios.
type sealDataset struct {
	signer note.Signer
	vkey   string
	sealed bool
}

// ensureSealDataset loads about --seal-events events into the scratch
// database with Store.Import (COPY): one key in five revoked, so that 5/6 of
// the events are key.generated.
func (b *bench) ensureSealDataset(ctx context.Context) (*sealDataset, error) {
	if b.sealDS != nil {
		return b.sealDS, nil
	}
	keys := b.cfg.sealEvents * 5 / 6
	if keys < 1 {
		keys = 1
	}
	begin := time.Now().Add(-365 * 24 * time.Hour)
	err := b.importKeys(ctx, b.scratch, "seal data set", keys, func(i int) keySpec {
		s := keySpec{org: fmt.Sprintf("bench-seal-%04d", i%sealOrgs), name: "production-key-" + fmt.Sprint(i%500),
			created: begin.Add(time.Duration(i) * time.Second)}
		if i%5 == 0 {
			t := s.created.Add(time.Hour)
			s.revoked = &t
		}
		return s
	}, nil)
	if err != nil {
		return nil, err
	}
	if err := b.analyze(ctx, b.scratch, "seal data set"); err != nil {
		return nil, err
	}
	ds := &sealDataset{}
	skey, vkey, err := audit.GenerateKey("keyledger-bench")
	if err != nil {
		return nil, err
	}
	ds.vkey = vkey
	if ds.signer, err = audit.NewSigner(skey); err != nil {
		return nil, err
	}
	b.sealDS = ds
	return ds, nil
}

// rawRead is the floor of every audit figure: reading every event row, the
// columns the sealer reads, with one SELECT, scanned into Go values. It
// returns rows per second.
func (b *bench) rawRead(ctx context.Context) (float64, error) {
	start := time.Now()
	rows, err := b.scratch.loader.Query(ctx, `SELECT `+eventstore.RawEventColumns+` FROM events e`)
	if err != nil {
		return 0, err
	}
	events, err := eventstore.ScanRawEvents(rows)
	if err != nil {
		return 0, err
	}
	return float64(len(events)) / time.Since(start).Seconds(), nil
}

// rawReads measures the floor twice before f and twice after it, and
// returns f's error and the median of the four rates (the mean of the middle
// two), so that the floor and the measurement share whatever else the
// machine does, and one read disturbed by it does not move the floor.
func (b *bench) rawReads(ctx context.Context, w io.Writer, f func() error) (float64, error) {
	var rates []float64
	read := func() error {
		for range 2 {
			r, err := b.rawRead(ctx)
			if err != nil {
				return fmt.Errorf("raw read: %w", err)
			}
			rates = append(rates, r)
		}
		return nil
	}
	if err := read(); err != nil {
		return 0, err
	}
	if err := f(); err != nil {
		return 0, err
	}
	if err := read(); err != nil {
		return 0, err
	}
	fmt.Fprintf(w, "  raw SELECT of every event row: %.0f and %.0f rows/s before, %.0f and %.0f rows/s after\n", rates[0], rates[1], rates[2], rates[3])
	slices.Sort(rates)
	return (rates[1] + rates[2]) / 2, nil
}

// seal measures the sealer: catching up with --seal-events events, against
// the raw read floor, then its lag while generate runs.
func (b *bench) seal(ctx context.Context, w io.Writer) (result, error) {
	cfg := b.cfg
	fmt.Fprintf(w, "\n== seal: the sealer over %s events (Store.Import), batch %d; baseline: one SELECT of the same rows; then seal lag under generate at %d clients\n",
		thousands(int64(cfg.sealEvents)), cfg.sealBatch, cfg.generateClients)
	load := loadAvg()
	fmt.Fprintf(w, "  (load average %.2f at start)\n", load)
	ds, err := b.ensureSealDataset(ctx)
	if err != nil {
		return result{}, err
	}
	b.scratch.checkpoint(ctx, b.progress)

	s, err := sealer.New(eventstore.New(b.scratch.loader), sealer.Options{Signer: ds.signer, Batch: cfg.sealBatch,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return result{}, err
	}
	var sealed uint64
	var took time.Duration
	stop := b.profile("seal")
	raw, err := b.rawReads(ctx, w, func() error {
		start := time.Now()
		var err error
		sealed, err = s.CatchUp(ctx)
		took = time.Since(start)
		return err
	})
	stop()
	if err != nil {
		return result{}, err
	}
	ds.sealed = true
	rate := float64(sealed) / took.Seconds()
	fmt.Fprintf(w, "  sealed %s events in %s: %.0f events/s\n", thousands(int64(sealed)), took.Round(time.Millisecond), rate)

	lags, gen, err := b.sealLag(ctx, ds)
	if err != nil {
		return result{}, err
	}
	printRun(w, gen, "req/s")
	lagP50, lagP99 := percentile(lags, 0.50), percentile(lags, 0.99)
	fmt.Fprintf(w, "  seal lag under generate: %d events, p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		len(lags), float64(lagP50.Microseconds())/1000, float64(lagP99.Microseconds())/1000, float64(percentile(lags, 1).Microseconds())/1000)

	r := result{Scenario: "seal", Unit: "events/s",
		Criterion: "ratio >= 0.3 and seal lag p99 < 1000 ms under generate",
		Value:     round(rate, 1), Baseline: round(raw, 1), Ratio: ratio(rate, raw), Target: sealTarget,
		TargetP99ms: sealTargetLagP99, P50ms: ms(lagP50), P99ms: ms(lagP99),
		BaselineP50ms: ms(gen.pct(0.50)), BaselineP99ms: ms(gen.pct(0.99)),
		Requests: int(sealed), Errors: gen.errors(), Clients: cfg.generateClients, DurationS: cfg.duration.Seconds(), LoadAvg1m: load}
	ratioOK := r.Ratio >= sealTarget
	lagOK := len(lags) > 0 && r.P99ms < sealTargetLagP99
	r.OK = ratioOK && lagOK
	fmt.Fprintf(w, "  ratio %.3f (target >= %.2f): %s; seal lag p99 %.1f ms at %.0f generate req/s (target < %.0f ms): %s\n",
		r.Ratio, sealTarget, verdict(ratioOK), r.P99ms, gen.rate(), sealTargetLagP99, verdict(lagOK))
	return r, nil
}

// sealLag runs the generate load for --duration against the service with its
// sealer running, as serve runs it, and returns the lag of every event
// sealed meanwhile, and the generate run.
func (b *bench) sealLag(ctx context.Context, ds *sealDataset) ([]time.Duration, *loadRun, error) {
	var mu sync.Mutex
	var lags []time.Duration
	measuring := false
	svc, err := b.startService(ctx, b.scratch, serviceOptions{Signer: ds.signer, SealLag: func(d time.Duration) {
		mu.Lock()
		if measuring {
			lags = append(lags, d)
		}
		mu.Unlock()
	}})
	if err != nil {
		return nil, nil, err
	}
	defer svc.close()

	gen := httpSide(httpLoad{
		label:   "keyledger POST /keys (201), sealer on",
		clients: b.cfg.generateClients,
		targets: generateTargeter(svc, "bench-seal-gen-"+b.runID),
		success: http.StatusCreated,
	})
	if b.cfg.warmup > 0 {
		gen(ctx, b.cfg.warmup)
	}
	mu.Lock()
	measuring = true
	mu.Unlock()
	run := gen(ctx, b.cfg.duration)
	// Let the sealer seal what the last requests committed.
	time.Sleep(2 * time.Second)
	mu.Lock()
	measuring = false
	out := lags
	mu.Unlock()
	return out, run, ctx.Err()
}

// auditVerify measures sealer.Verify over the sealed data set against the
// raw read floor.
func (b *bench) auditVerify(ctx context.Context, w io.Writer) (result, error) {
	fmt.Fprintf(w, "\n== audit-verify: keyledger audit verify over %s sealed events; baseline: one SELECT of the same rows\n",
		thousands(int64(b.cfg.sealEvents)))
	load := loadAvg()
	fmt.Fprintf(w, "  (load average %.2f at start)\n", load)
	ds, err := b.ensureSealDataset(ctx)
	if err != nil {
		return result{}, err
	}
	if !ds.sealed {
		s, err := sealer.New(eventstore.New(b.scratch.loader), sealer.Options{Signer: ds.signer, Batch: b.cfg.sealBatch,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return result{}, err
		}
		if _, err := s.CatchUp(ctx); err != nil {
			return result{}, err
		}
		ds.sealed = true
	}
	b.scratch.checkpoint(ctx, b.progress)
	verifier, err := audit.NewVerifier(ds.vkey)
	if err != nil {
		return result{}, err
	}
	var rep sealer.Report
	var took time.Duration
	stop := b.profile("audit-verify")
	raw, err := b.rawReads(ctx, w, func() error {
		start := time.Now()
		var err error
		rep, err = sealer.Verify(ctx, b.scratch.loader, verifier, nil)
		took = time.Since(start)
		return err
	})
	stop()
	if err != nil {
		return result{}, err
	}
	rate := float64(rep.Sealed) / took.Seconds()
	fmt.Fprintf(w, "  verified %s sealed events and %d checkpoints in %s: %.0f events/s\n",
		thousands(int64(rep.Sealed)), rep.Checkpoints, took.Round(time.Millisecond), rate)
	r := result{Scenario: "audit-verify", Unit: "events/s", Criterion: "ratio >= 0.3",
		Value: round(rate, 1), Baseline: round(raw, 1), Ratio: ratio(rate, raw), Target: auditVerifyTarget,
		Requests: int(rep.Sealed), Clients: 1, DurationS: round(took.Seconds(), 3), LoadAvg1m: load}
	r.OK = r.Ratio >= auditVerifyTarget
	fmt.Fprintf(w, "  ratio %.3f (target >= %.2f): %s\n", r.Ratio, auditVerifyTarget, verdict(r.OK))
	return r, nil
}
