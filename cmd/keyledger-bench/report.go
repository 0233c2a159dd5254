package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// result is one scenario's verdict, printed as one JSON line. The first six
// fields are the contract; the rest help a reader.
type result struct {
	Scenario string  `json:"scenario"`
	Value    float64 `json:"value"`
	Baseline float64 `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Target   float64 `json:"target"`
	OK       bool    `json:"ok"`

	Unit        string  `json:"unit"`
	Criterion   string  `json:"criterion"`
	TargetP99ms float64 `json:"target_p99_ms,omitempty"`
	// RatioOK and P99OK are verify's two verdicts, each on its own; OK is
	// both.
	RatioOK       *bool   `json:"ratio_ok,omitempty"`
	P99OK         *bool   `json:"p99_ok,omitempty"`
	P50ms         float64 `json:"p50_ms,omitempty"`
	P99ms         float64 `json:"p99_ms,omitempty"`
	MaxMs         float64 `json:"max_ms,omitempty"`
	BaselineP50ms float64 `json:"baseline_p50_ms,omitempty"`
	BaselineP99ms float64 `json:"baseline_p99_ms,omitempty"`
	BaselineMaxMs float64 `json:"baseline_max_ms,omitempty"`
	Requests      int     `json:"requests"`
	Errors        int     `json:"errors"`
	BaselineErrs  int     `json:"baseline_errors"`
	// PgCPUus and BaselinePgCPUus are the CPU time the Postgres backends
	// spent per successful operation (omitted when Postgres is remote).
	PgCPUus         float64 `json:"pg_cpu_us_per_op,omitempty"`
	BaselinePgCPUus float64 `json:"baseline_pg_cpu_us_per_op,omitempty"`
	// ProcCPUus and BaselineProcCPUus are the bench process's CPU time per
	// successful operation: the service's and the load generator's, or the
	// baseline client's (omitted where not measured).
	ProcCPUus         float64 `json:"process_cpu_us_per_op,omitempty"`
	BaselineProcCPUus float64 `json:"baseline_process_cpu_us_per_op,omitempty"`
	// Propagation: the background load it ran under, and how many times
	// the gateway client asked the service during the revocations (a
	// refusal then came from the service, not from a notice).
	BackgroundVerifyRPS  float64 `json:"background_verify_rps,omitempty"`
	BackgroundVerifyP99  float64 `json:"background_verify_p99_ms,omitempty"`
	BackgroundGatewayOps float64 `json:"background_gateway_verify_per_s,omitempty"`
	GatewayServiceCalls  *int64  `json:"gateway_service_calls,omitempty"`
	// Gateway-verify: allocations per operation, measured and baseline.
	AllocsPerOp         *int64 `json:"allocs_per_op,omitempty"`
	BaselineAllocsPerOp *int64 `json:"baseline_allocs_per_op,omitempty"`
	// Generate: keys per transaction, read from the events table (the
	// service commits concurrent commands together).
	KeysPerTransaction float64 `json:"keys_per_transaction,omitempty"`
	// Verify: the positives in the service's cache after the run, and
	// whether its follower was still current then.
	CachedKeys   int     `json:"cached_keys,omitempty"`
	CacheCurrent *bool   `json:"cache_current_at_end,omitempty"`
	Clients      int     `json:"clients"`
	DurationS    float64 `json:"duration_s"`
	// LoadAvg1m is the machine's 1-minute load average when the scenario
	// started: other work on the machine makes every figure noisier.
	LoadAvg1m float64 `json:"loadavg_1m"`
	// PgTLS says whether the bench's connections to Postgres use TLS (the
	// URL's sslmode: prefer, pgx's default, takes it when the server offers
	// it). A baseline of single-statement transactions pays it per
	// operation where the service pays it per group, so that generate's
	// ratio is higher with TLS (see BENCHMARKS.md).
	PgTLS bool `json:"pg_tls"`
}

// measured fills the fields of a result that every scenario reports the
// same way from its measured run and its baseline: latencies, counts,
// Postgres CPU and the conditions of the run. The scenario sets the value,
// baseline, ratio, target and verdict.
func measured(scenario, unit, criterion string, got, base *loadRun, clients int, d time.Duration, load float64) result {
	return result{
		Scenario:          scenario,
		Unit:              unit,
		Criterion:         criterion,
		P50ms:             ms(got.pct(0.50)),
		P99ms:             ms(got.pct(0.99)),
		BaselineP50ms:     ms(base.pct(0.50)),
		BaselineP99ms:     ms(base.pct(0.99)),
		Requests:          got.requests,
		Errors:            got.errors(),
		BaselineErrs:      base.errors(),
		PgCPUus:           got.pgCPUPerOp(),
		BaselinePgCPUus:   base.pgCPUPerOp(),
		ProcCPUus:         got.procCPUPerOp(),
		BaselineProcCPUus: base.procCPUPerOp(),
		Clients:           clients,
		DurationS:         d.Seconds(),
		LoadAvg1m:         load,
	}
}

// loadAvg returns the 1-minute load average, or 0 where /proc has none.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

func ratio(value, baseline float64) float64 {
	if baseline == 0 {
		return 0
	}
	return round(value/baseline, 3)
}

// printRun prints one measured run on one line.
func printRun(w io.Writer, r *loadRun, unit string) {
	pg := ""
	if r.pgCPUPerOp() >= 1 {
		pg = fmt.Sprintf(", Postgres CPU %.0f µs/op", r.pgCPUPerOp())
	}
	if r.procCPUPerOp() >= 1 {
		pg += fmt.Sprintf(", bench process CPU %.0f µs/op", r.procCPUPerOp())
	}
	fmt.Fprintf(w, "  %-34s %10.1f %-6s p50 %8.3f ms  p99 %8.3f ms  (%d ok, %d errors, %d clients, %.1fs%s)\n",
		r.label, r.rate(), unit, ms(r.pct(0.50)), ms(r.pct(0.99)), r.ok, r.errors(), r.clients, r.wall.Seconds(), pg)
	if r.errors() > 0 {
		fmt.Fprintf(w, "    errors: %s\n", r.failureSummary())
	}
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// printSummary ends the output: one JSON line per scenario.
func printSummary(w io.Writer, results []result) {
	if len(results) == 0 {
		return
	}
	fmt.Fprintln(w)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // keep "ratio >= 0.5" readable
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			panic(err) // a struct of numbers and strings always encodes
		}
	}
}
