// Command keyledger-bench measures keyledger against Postgres and prints each
// figure beside a baseline measured in the same run, on the same machine, with
// the same settings.
//
//	go run ./cmd/keyledger-bench <generate|verify|list|propagation|gateway-verify|all> [flags]
//
// Every figure is judged as a ratio to its baseline (or, for latency targets,
// next to it) because the load generator, the service under test and
// Postgres all run on the same machine: the bench keeps the load generator
// (vegeta, used as a library) and the HTTP server in one process, and on a
// 2-core machine the two share their CPUs with each other and with Postgres.
// An absolute requests-per-second figure from such a run says little about a
// production deployment; the ratio to a baseline that pays the same costs
// (the same client, the same kernel, the same Postgres) does. For the same
// reason a measurement and its baseline alternate in rounds (--rounds): a
// burst of other work on the machine then weighs on both.
//
// The bench never touches the service's database. It derives two databases
// of its own from KEYLEDGER_DATABASE_URL, creates them with
// eventstore.EnsureDatabase and migrates them: keyledger_bench holds the
// million-key data set of the list scenario and nothing else, kept between
// runs (a marker table records it) and reloaded only with --reload, --fresh
// or when its sizes change; keyledger_bench_scratch takes the writes of
// generate and verify, and is dropped and recreated by every run, so that
// neither grows the list data set nor inherits a previous run's keys.
//
// The service under test is built in-process the way cmd/keyledger/serve.go
// builds it (eventstore.New with the KeyList and KeyLookup projectors,
// domain.Ledger, projections.Views, api.New with a Prometheus registry and a
// JSON logger) and served by a real http.Server on 127.0.0.1:0. Its request
// log is formatted as in production but written to io.Discard.
//
// The service runs with NATS, as served: it relays the ledger to a stream
// and /v1/verify answers from the cache that the notices keep current. The
// server is the one KEYLEDGER_NATS_URL (or --nats-url) names, else one
// embedded in the process (internal/natsserver) with its files in a
// temporary directory. Each run publishes to a stream and subjects of its
// own (BENCH_<run>, bench<run>.>), deleted at the end, and waits until the
// notices followers are current before measuring anything that relies on
// the cache. The propagation and gateway-verify scenarios add a gateway
// client (consumers/gateway) on its own NATS connection, as a gateway
// process would run it. gateway-verify measures with testing.Benchmark,
// in this process, like a Go benchmark.
//
// Standard output gets the human-readable figures and, last, one JSON line
// per scenario; progress goes to standard error. The exit status is 1 when a
// target is missed and 2 when the bench itself fails.
package main
