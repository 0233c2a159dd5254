package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/consumers/notices"
	embeddednats "github.com/keyledger/keyledger/internal/natsserver"
)

// benchNATS is the NATS server of a run: the one --nats-url names, or one
// embedded in this process with its files in a temporary directory. The run
// publishes its notices to a stream and subjects of its own, so that it
// shares a server with anything else without reading or disturbing it.
type benchNATS struct {
	url      string
	embedded *natsserver.Server // nil with --nats-url
	dir      string             // the embedded server's files
	// syncAlways is the embedded server's SyncAlways.
	syncAlways bool
	nc         *nats.Conn // the bench's own, for housekeeping
	notices    notices.Config
}

// needsNATS says whether a scenario runs the service with NATS, as it is
// served (relay, notices follower, cached verification). list runs the
// service on Postgres alone; seal's lag measurement runs it with the sealer
// and without NATS.
func needsNATS(scenario string) bool {
	return !slices.Contains([]string{"list", "seal", "audit-verify"}, scenario)
}

// openNATS connects to --nats-url, or starts an embedded server, and names
// this run's stream.
func (b *bench) openNATS() error {
	n := &benchNATS{
		url:     b.cfg.natsURL,
		notices: notices.Config{Prefix: "bench" + b.runID, Stream: "BENCH_" + b.runID}.WithDefaults(),
	}
	if err := n.notices.Validate(); err != nil {
		return err
	}
	if n.url == "" {
		dir, err := os.MkdirTemp("", "keyledger-bench-nats-")
		if err != nil {
			return err
		}
		n.dir = dir
		s, err := embeddednats.Start(embeddednats.Options{Dir: dir, SyncAlways: b.cfg.natsSyncAlways}, slog.New(slog.DiscardHandler))
		if err != nil {
			_ = os.RemoveAll(dir)
			return err
		}
		n.embedded, n.url, n.syncAlways = s, s.ClientURL(), b.cfg.natsSyncAlways
	}
	nc, err := nats.Connect(n.url, nats.Name("keyledger-bench"), nats.Timeout(5*time.Second))
	if err != nil {
		n.close(b.progress)
		return fmt.Errorf("NATS %s: %w (set --nats-url or KEYLEDGER_NATS_URL to a NATS server with JetStream, or leave it empty for an embedded one)", n.url, err)
	}
	n.nc = nc
	b.nats = n
	return nil
}

// describe says which server the run uses, for the report.
func (n *benchNATS) describe() string {
	if n.embedded != nil {
		sync := "JetStream syncing every 2 min, nats-server's default (--nats-sync-always to fsync each message as serve's embedded server does)"
		if n.syncAlways {
			sync = "JetStream fsync on every message, as keyledger serve's embedded server"
		}
		return fmt.Sprintf("embedded at %s (%s; files in %s, removed at the end), stream %s", n.url, sync, n.dir, n.notices.Stream)
	}
	return fmt.Sprintf("%s, stream %s (deleted at the end)", n.url, n.notices.Stream)
}

// close deletes the run's stream, closes the connection and stops the
// embedded server, removing its files.
func (n *benchNATS) close(progress io.Writer) {
	if n.nc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if js, err := jetstream.New(n.nc); err == nil {
			if err := js.DeleteStream(ctx, n.notices.Stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				fmt.Fprintf(progress, "bench: delete stream %s: %v\n", n.notices.Stream, err)
			}
		}
		cancel()
		n.nc.Close()
	}
	if n.embedded != nil {
		n.embedded.Shutdown()
		n.embedded.WaitForShutdown()
	}
	if n.dir != "" {
		if err := os.RemoveAll(n.dir); err != nil {
			fmt.Fprintf(progress, "bench: %v\n", err)
		}
	}
}

// waitCurrent waits until current reports true, telling progress every few
// seconds, for at most --current-timeout. what names the follower.
func (b *bench) waitCurrent(ctx context.Context, what string, current func() bool, applied func() uint64) error {
	start := time.Now()
	deadline := start.Add(b.cfg.currentTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	lastSaid := start
	for !current() {
		now := time.Now()
		if now.After(deadline) {
			return fmt.Errorf("%s not current after %s (%d notices applied): is the relay publishing to stream %s on NATS %s? (--current-timeout sets the wait)",
				what, b.cfg.currentTimeout, applied(), b.nats.notices.Stream, b.nats.url)
		}
		if now.Sub(lastSaid) >= 5*time.Second {
			fmt.Fprintf(b.progress, "bench: waiting for %s to be current (%s, %d notices applied)\n", what, now.Sub(start).Round(time.Second), applied())
			lastSaid = now
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	fmt.Fprintf(b.progress, "bench: %s current after %s (%d notices applied)\n", what, time.Since(start).Round(10*time.Millisecond), applied())
	return nil
}
