// Package natstest connects tests to the real NATS server with JetStream
// named by KEYLEDGER_TEST_NATS_URL (default: the local one), and names the
// streams and subjects that keep each test to itself, as internal/pgtest does
// for Postgres.
package natstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Hint says how to start the NATS server the tests need.
const Hint = "is NATS with JetStream running? start it with: start-stop-daemon --start --oknodo --background " +
	"--exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log (or run .ci/run)"

// URL is the NATS server tests use.
func URL() string {
	if u := os.Getenv("KEYLEDGER_TEST_NATS_URL"); u != "" {
		return u
	}
	return nats.DefaultURL
}

// Connect opens a connection to url for t, closed when t ends; it fails t
// with Hint when NATS is not there.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(5 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v\n%s", url, err, Hint)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Random returns n random hex characters, for names of streams and subjects.
func Random(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
