// Command keyledger-bench measures keyledger against Postgres and prints each
// figure beside a baseline measured in the same run, on the same machine, with
// the same settings.
//
//	go run ./cmd/keyledger-bench <generate|verify|list|all> [flags]
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
// Standard output gets the human-readable figures and, last, one JSON line
// per scenario; progress goes to standard error. The exit status is 1 when a
// target is missed and 2 when the bench itself fails.
package main
