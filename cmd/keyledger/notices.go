package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/consumers/relay"
	"github.com/keyledger/keyledger/eventstore"
)

const republishSummary = `Publishes the ledger's events again to the notices stream, in ledger order,
from the event at position --from (1 is the first event) to the last event
committed when it starts: it refills a stream that was lost or purged, since
Postgres, not NATS, keeps the ledger. An event still in the stream will be
there twice: followers (gateways, service instances) drop the second by the
key's stream version. It can run while the service runs, and reports its
progress on stderr.`

// noticesCmd dispatches the notices subcommands.
func noticesCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "republish" {
		fmt.Fprint(stderr, "Usage: keyledger notices republish --from POSITION [flags]\n")
		if len(args) == 0 {
			return errors.New("notices: no subcommand given")
		}
		if args[0] == "-h" || args[0] == "--help" {
			return flag.ErrHelp
		}
		return fmt.Errorf("notices: unknown subcommand %q", args[0])
	}
	var from int64 = -1
	cfg, err := parseCommand(command{name: "notices republish", summary: republishSummary,
		settings: []string{"database-url", "nats-url", "nats-subject-prefix", "nats-stream", "log-level"},
		extra: func(fs *flag.FlagSet) {
			fs.Int64Var(&from, "from", -1, "ledger position of the first event to publish again (required; 1 for all)")
		}}, args[1:], getenv, stderr)
	if err != nil {
		return err
	}
	if from < 1 {
		return errors.New("--from: give the ledger position to start from, 1 or more (1 republishes everything)")
	}
	if cfg.NATSURL == "" {
		return errors.New("KEYLEDGER_NATS_URL: give the NATS server the service publishes to (an embedded server prints its URL at start)")
	}
	log := newLogger(stderr, cfg.LogLevel)
	pool, err := connectDatabase(ctx, cfg.DatabaseURL, toolPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	nc, err := notices.Connect(cfg.NATSURL, "keyledger notices republish", log)
	if err != nil {
		return fmt.Errorf("KEYLEDGER_NATS_URL: %w", err)
	}
	defer nc.Close()
	r, err := relay.New(eventstore.New(pool), nc, relay.Config{
		Notices: notices.Config{Prefix: cfg.SubjectPrefix, Stream: cfg.Stream}, Logger: log})
	if err != nil {
		return err
	}
	start := time.Now()
	n, err := r.Republish(ctx, from, func(done int, position int64) {
		fmt.Fprintf(stderr, "republished %d events, up to position %d (%.0f/s)\n",
			done, position, float64(done)/max(time.Since(start).Seconds(), 1e-3))
	})
	if err != nil {
		return fmt.Errorf("republished %d events, then: %w", n, err)
	}
	fmt.Fprintf(stdout, "republished %d events to stream %s from position %d\n", n, cfg.Stream, from)
	return nil
}
