package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/keyledger/keyledger/internal/service"
)

const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/keyledger?sslmode=disable"
	// defaultPoolConns mirrors cmd/keyledger/serve.go's defaultPoolConns: the
	// service's pool size when the database URL sets none.
	defaultPoolConns = 16
)

// scenarios in the order "all" runs them.
var scenarios = []string{"generate", "verify", "list", "propagation", "gateway-verify", "seal", "audit-verify"}

const usageHead = `keyledger-bench: measure keyledger against Postgres, each figure beside a
baseline measured in the same run.

Usage:
  keyledger-bench <scenario> [flags]

Scenarios:
  generate  POST /v1/orgs/{org}/keys (GenerateKey) at --generate-clients
            concurrent clients, beside raw single-row INSERT transactions of a
            ~300-byte JSONB row at --raw-conns pgx connections.
            value = generate req/s, baseline = raw inserts/s; ok if ratio >= 0.5.
  verify    GET /v1/verify at --verify-clients connections with --verify-keys
            keys in the lookup view (bulk-loaded with Store.Import), each
            request a random valid key, beside a trivial chi handler returning
            a small JSON body, loaded the same way. The service runs with its
            cache as served: the cache is primed with one request per key, and
            the measurement waits until the notices follower is current.
            ok if req/s ratio >= 0.6 (issue 3) and p99 < 5 ms (issue 2); the
            JSON line gives each verdict too (ratio_ok, p99_ok).
  list      GET /v1/orgs/{org}/keys?q=<term>&status=active in an organization
            of --list-org-keys keys, with --list-total-keys keys in the table
            overall, at --list-clients clients with varied search terms.
            value = p99 ms, baseline = p99 ms of the unfiltered list on the same
            data; ok if p99 < 20 ms. The data set is kept between runs.
  propagation
            time from the RevokeKey HTTP response to a gateway client
            (consumers/gateway, its own NATS connection) refusing the key as
            revoked: --propagation-revocations keys, primed in the client's
            cache, revoked one at a time; after each response the client's
            Verify is polled (a ~20 µs sleep between polls) until it refuses.
            Meanwhile GET /v1/verify runs at --propagation-verify-rate req/s
            (vegeta, constant rate) and two goroutines call the client's
            cached Verify at --propagation-gateway-rate in all. Baseline, in
            alternating rounds under the same load: the core NATS floor,
            publish to subscriber (another connection) of a 300-byte message,
            one at a time, at least 1,000 messages. --rounds applies;
            --duration and --warmup do not.
            value = p99 ms, baseline = floor p99 ms, ratio = value / floor;
            ok if p99 <= 10 ms.
  gateway-verify
            the gateway client's Verify of a cached valid key, as a Go
            benchmark (testing.Benchmark, about 1 s per run) over a warm
            cache of --gateway-keys keys, the client current; baseline:
            domain.HashKey of the key and a map lookup by digest, measured
            the same way, in --rounds alternating runs of each (--duration
            and --warmup do not apply).
            value = ns/op, baseline = ns/op, ratio = baseline / value;
            ok if ns/op < 1000 and allocs/op == 0.
  seal      the sealer catching up with --seal-events events loaded with
            Store.Import, beside the raw floor of reading the same rows with
            one SELECT (the median of two reads before and two after); then
            the seal lag of every event generate commits at --generate-clients clients for --duration,
            with the sealer running as serve runs it.
            value = sealed events/s, baseline = raw rows/s;
            ok if ratio >= 0.3 and seal lag p99 < 1 s.
  audit-verify
            keyledger audit verify (sealer.Verify) over the same sealed
            events, beside the same raw floor. ok if ratio >= 0.3.
  all       every scenario above. Several scenarios can be given as a
            comma-separated list: seal,audit-verify share one data set.

The load generator and the service share this process, and on a small machine
they share the CPUs with Postgres: that is why every figure is read as a ratio
to a baseline paying the same costs. Each measurement and its baseline run in
alternating rounds (--rounds), so that other work on the machine weighs on
both alike.

Output: figures on stdout, then one JSON line per scenario
  {"scenario", "value", "baseline", "ratio", "target", "ok", ...};
progress on stderr. Exit status 1 if a target is missed, 2 on failure.

Environment:
  KEYLEDGER_DATABASE_URL  the service's Postgres URL (default
                          ` + defaultDatabaseURL + `);
                          the bench never touches that database: it uses
                          <name>_bench (the list data set, kept between runs)
                          and <name>_bench_scratch (every other scenario;
                          dropped and recreated each run) on the same server.
  KEYLEDGER_NATS_URL      the NATS server (with JetStream) the service publishes
                          its notices to and gateway clients read (--nats-url);
                          empty: an embedded server in a temporary directory.
                          Each run uses a stream and subjects of its own
                          (BENCH_<run>, bench<run>.>) and deletes the stream
                          at the end. Every scenario but list runs the
                          service with NATS, as it is served.

Flags:
`

// config is the bench's settings, from flags and the KEYLEDGER_* environment.
type config struct {
	scenario string

	databaseURL string // the service's; never connected to
	benchDBName string // overrides <name>_bench
	benchURL    string // derived: the bench's database for the list data set
	benchDB     string
	scratchURL  string // derived: the bench's database for writes, new each run
	scratchDB   string
	natsURL     string

	duration time.Duration
	warmup   time.Duration
	rounds   int
	fresh    bool
	reload   bool

	poolConns   int
	loadWorkers int
	batch       int

	generateClients int
	rawConns        int

	verifyClients int
	verifyKeys    int

	sealEvents int
	sealBatch  int

	listClients   int
	listOrgKeys   int
	listTotalKeys int
	explain       bool

	natsSyncAlways bool
	currentTimeout time.Duration

	propagationRevocations int
	propagationVerifyRate  int
	propagationGatewayRate int

	gatewayKeys int

	profileDir string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process. It returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "keyledger-bench:", err)
		return 2
	}
	// The service runs with the garbage collector setting serve.go gives it.
	// Being one process, the load generator and the baselines run with it too.
	service.TuneGC(getenv("GOGC") != "")
	results, err := runScenarios(ctx, cfg, stdout, stderr)
	printSummary(stdout, results)
	if err != nil {
		fmt.Fprintln(stderr, "keyledger-bench:", err)
		return 2
	}
	for _, r := range results {
		if !r.OK {
			return 1
		}
	}
	return 0
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("keyledger-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbURL := getenv("KEYLEDGER_DATABASE_URL")
	if dbURL == "" {
		dbURL = defaultDatabaseURL
	}
	fs.StringVar(&c.databaseURL, "database-url", dbURL,
		"the service's Postgres URL (env KEYLEDGER_DATABASE_URL); the bench works in its own database on that server")
	fs.StringVar(&c.benchDBName, "bench-database", "",
		"name of the bench's database for the list data set (default: the service database's name + \"_bench\"); the other scenarios use it + \"_scratch\"")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long each measured run lasts (each baseline lasts as long)")
	fs.IntVar(&c.rounds, "rounds", 5, "split each measured run and its baseline into this many alternating slices, so that other load on the machine weighs on both alike")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "unmeasured load before each measured run, to warm connections and caches (0 for none)")
	fs.BoolVar(&c.fresh, "fresh", false, "drop the list data set's database before running, so that it is reloaded (the scratch database is new each run anyway)")
	fs.BoolVar(&c.reload, "reload", false, "list: reload the data set even if the bench database already holds it (drops and recreates that database)")
	fs.IntVar(&c.poolConns, "pool-conns", defaultPoolConns, "connection pool size of the service under test (serve.go's default when the URL sets no pool_max_conns)")
	fs.IntVar(&c.loadWorkers, "load-workers", 2, "concurrent Store.Import transactions while loading data sets")
	fs.IntVar(&c.batch, "batch", 10000, "events per Store.Import transaction while loading data sets")
	fs.IntVar(&c.generateClients, "generate-clients", 32, "generate: concurrent HTTP clients")
	fs.IntVar(&c.rawConns, "raw-conns", 32, "generate: pgx connections of the raw INSERT baseline")
	fs.IntVar(&c.verifyClients, "verify-clients", 64, "verify: concurrent HTTP connections (service and trivial baseline alike)")
	fs.IntVar(&c.verifyKeys, "verify-keys", 100000, "verify: keys loaded into the lookup view, fresh each run")
	fs.IntVar(&c.sealEvents, "seal-events", 1000000, "seal, audit-verify: events loaded into the scratch database (one key in five revoked)")
	fs.IntVar(&c.sealBatch, "seal-batch", 5000, "seal, audit-verify: events per sealing transaction (the sealer's default)")
	fs.IntVar(&c.listClients, "list-clients", 4, "list: concurrent HTTP clients")
	fs.IntVar(&c.listOrgKeys, "list-org-keys", 100000, "list: keys of the organization that is listed")
	fs.IntVar(&c.listTotalKeys, "list-total-keys", 1000000, "list: keys in the table overall, the listed organization's included")
	fs.BoolVar(&c.explain, "explain", false, "list: after the run, print the plan and timing (auto_explain, which needs a superuser) of each statement of the first page of each search term, with status=active")
	natsURL := getenv("KEYLEDGER_NATS_URL")
	fs.StringVar(&c.natsURL, "nats-url", natsURL, "NATS server with JetStream for the notices (env KEYLEDGER_NATS_URL); empty: an embedded server in a temporary directory")
	fs.BoolVar(&c.natsSyncAlways, "nats-sync-always", false, "embedded NATS: fsync every JetStream message, as keyledger serve's embedded server does (default: nats-server's own, sync every 2 min)")
	fs.DurationVar(&c.currentTimeout, "current-timeout", 3*time.Minute, "how long to wait for a notices follower (the service's, a gateway client's) to be current before measuring; the relay first publishes every loaded key's event")
	fs.IntVar(&c.propagationRevocations, "propagation-revocations", 1000, "propagation: keys revoked, one at a time")
	fs.IntVar(&c.propagationVerifyRate, "propagation-verify-rate", 1000, "propagation: background GET /v1/verify load on the service, req/s (constant rate)")
	fs.IntVar(&c.propagationGatewayRate, "propagation-gateway-rate", 10000, "propagation: background cached Verify calls on the gateway client, per second, from two goroutines (0 for none)")
	fs.IntVar(&c.gatewayKeys, "gateway-keys", 10000, "gateway-verify: keys in the gateway client's warm cache")
	fs.StringVar(&c.profileDir, "profile-dir", "", "write a CPU profile of each scenario's measured rounds to <dir>/<scenario>.cpu.pprof, and the heap profile at their end to <dir>/<scenario>.heap.pprof (whole process: service, baseline and load generator)")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
	}

	// Flags may come before or after the scenario.
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return c, fmt.Errorf("no scenario given: one of %s, all", strings.Join(scenarios, ", "))
	}
	c.scenario = fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.validate()
}

func (c *config) validate() error {
	var errs []error
	if c.scenario != "all" {
		for _, s := range strings.Split(c.scenario, ",") {
			if !slices.Contains(scenarios, s) {
				errs = append(errs, fmt.Errorf("unknown scenario %q: one of %s, all, or a comma-separated list", s, strings.Join(scenarios, ", ")))
			}
		}
	}
	var err error
	if c.benchURL, c.benchDB, err = benchDatabaseURL(c.databaseURL, c.benchDBName); err != nil {
		errs = append(errs, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err))
	} else if c.scratchURL, c.scratchDB, err = benchDatabaseURL(c.databaseURL, c.benchDB+"_scratch"); err != nil {
		errs = append(errs, fmt.Errorf("KEYLEDGER_DATABASE_URL: %w", err))
	}
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("--%s: must be positive, got %d", name, v))
		}
	}
	positive("rounds", c.rounds)
	positive("pool-conns", c.poolConns)
	positive("load-workers", c.loadWorkers)
	positive("batch", c.batch)
	positive("generate-clients", c.generateClients)
	positive("raw-conns", c.rawConns)
	positive("verify-clients", c.verifyClients)
	positive("verify-keys", c.verifyKeys)
	positive("seal-events", c.sealEvents)
	positive("seal-batch", c.sealBatch)
	positive("list-clients", c.listClients)
	positive("list-org-keys", c.listOrgKeys)
	positive("propagation-revocations", c.propagationRevocations)
	positive("propagation-verify-rate", c.propagationVerifyRate)
	positive("gateway-keys", c.gatewayKeys)
	if c.propagationGatewayRate < 0 {
		errs = append(errs, errors.New("--propagation-gateway-rate: must not be negative"))
	}
	if c.currentTimeout <= 0 {
		errs = append(errs, errors.New("--current-timeout: must be positive"))
	}
	if c.listTotalKeys < c.listOrgKeys {
		errs = append(errs, fmt.Errorf("--list-total-keys (%d) must be at least --list-org-keys (%d)", c.listTotalKeys, c.listOrgKeys))
	}
	if c.duration <= 0 {
		errs = append(errs, errors.New("--duration: must be positive"))
	}
	if c.warmup < 0 {
		errs = append(errs, errors.New("--warmup: must not be negative"))
	}
	return errors.Join(errs...)
}

// runScenarios prepares the bench databases and runs the chosen scenarios,
// returning the result of each one that completed.
func runScenarios(ctx context.Context, cfg config, stdout, stderr io.Writer) ([]result, error) {
	selected := strings.Split(cfg.scenario, ",")
	if cfg.scenario == "all" {
		selected = scenarios
	}
	fmt.Fprintf(stdout, "keyledger-bench: bench databases %q (list data set, kept) and %q (scratch, new each run) at %s; the service's database %q is never touched\n",
		cfg.benchDB, cfg.scratchDB, redactURL(cfg.benchURL), serviceDB(cfg.databaseURL))
	tlsOn, err := usesTLS(ctx, cfg.benchURL)
	if err != nil {
		return nil, err
	}
	if tlsOn {
		fmt.Fprintln(stdout, "keyledger-bench: Postgres connections use TLS (the URL's sslmode allows it and the server offers it); the service's default URL sets sslmode=disable. TLS costs the raw baselines per statement and the service per group: compare runs made alike")
	} else {
		fmt.Fprintln(stdout, "keyledger-bench: Postgres connections without TLS, as the service's default URL (sslmode=disable)")
	}
	fmt.Fprintf(stdout, "keyledger-bench: %d CPUs shared by the load generator, the service and Postgres; %s per measured run and per baseline, in %d alternating rounds, after %s of warm-up each\n",
		runtime.NumCPU(), cfg.duration, cfg.rounds, cfg.warmup)

	b := newBench(cfg, stderr)
	defer b.close()
	if slices.ContainsFunc(selected, needsNATS) {
		if err := b.openNATS(); err != nil {
			return nil, err
		}
		fmt.Fprintf(stdout, "keyledger-bench: NATS %s\n", b.nats.describe())
	} else {
		fmt.Fprintln(stdout, "keyledger-bench: NATS unused (list, seal and audit-verify run without it)")
	}
	if cfg.fresh {
		fmt.Fprintf(stderr, "bench: --fresh: dropping database %q\n", cfg.benchDB)
		if err := dropDatabase(ctx, cfg.benchURL); err != nil {
			return nil, err
		}
	}
	var ds *listDataset
	if slices.Contains(selected, "list") {
		if err := b.data.open(ctx); err != nil {
			return nil, err
		}
		var err error
		if ds, err = b.ensureListDataset(ctx); err != nil {
			return nil, err
		}
	}
	if slices.ContainsFunc(selected, func(s string) bool { return s != "list" }) {
		if err := b.scratch.recreate(ctx); err != nil {
			return nil, err
		}
	}
	var results []result
	for _, name := range selected {
		var r result
		var err error
		switch name {
		case "generate":
			r, err = b.generate(ctx, stdout)
		case "verify":
			r, err = b.verify(ctx, stdout)
		case "list":
			r, err = b.list(ctx, ds, stdout)
		case "propagation":
			r, err = b.propagation(ctx, stdout)
		case "gateway-verify":
			r, err = b.gatewayVerify(ctx, stdout)
		case "seal":
			r, err = b.seal(ctx, stdout)
		case "audit-verify":
			r, err = b.auditVerify(ctx, stdout)
		}
		if err != nil {
			return results, fmt.Errorf("%s: %w", name, err)
		}
		r.PgTLS = tlsOn
		results = append(results, r)
	}
	return results, nil
}
