package notices

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// Connect opens the NATS connection that keyledger's processes (the
// service, its relay, a gateway, the tools) use for notices: it reconnects
// for ever, since notices must resume after any outage, and a follower
// picks up where it stopped. Nothing is held for sending while disconnected:
// a JetStream publication is retried by the relay anyway, and a heartbeat
// sent late would vouch for a moment long past.
func Connect(url, name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "name", name, "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "name", name, "url", c.ConnectedUrl()) }),
	)
	if err != nil {
		return nil, fmt.Errorf("NATS %s: %w", url, err)
	}
	return nc, nil
}
