// Package natsserver runs the NATS server that keyledger embeds when no NATS
// URL is configured: the real nats-server, with JetStream, in this process,
// so that the service runs with only Postgres present and gateways can still
// connect to it.
package natsserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options are the embedded server's settings.
type Options struct {
	// Dir is where JetStream keeps its files (a "nats" folder is made in it).
	Dir string
	// Addr is the host:port to listen on; port 0 picks a free one. The
	// default is 127.0.0.1:0: only this machine can connect.
	Addr string
	// SyncAlways makes JetStream fsync every message before acknowledging
	// it. Without it, JetStream syncs every two minutes and loses
	// acknowledged messages when the machine crashes (nats-server #7564);
	// keyledger's relay would then have moved its checkpoint past notices
	// that no longer exist.
	SyncAlways bool
}

// Start runs an embedded NATS server and waits until it accepts
// connections. Shut it down with Shutdown and WaitForShutdown.
func Start(o Options, log *slog.Logger) (*server.Server, error) {
	if o.Dir == "" {
		return nil, errors.New("embedded NATS: a data directory is needed")
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	host, portText, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS address %q: %w", o.Addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS port %q: %w", portText, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "keyledger-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(o.Dir, "nats"),
		SyncAlways: o.SyncAlways,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start on %s within 10 s", o.Addr)
	}
	log.Info("embedded NATS server started", "url", s.ClientURL(), "store", filepath.Join(o.Dir, "nats"))
	return s, nil
}
