package main

import (
	"context"

	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/consumers/gateway"
)

// gatewayClient is a gateway's keyledger client (consumers/gateway) on the
// service under test: its own NATS connection, following this run's stream,
// and a count of the calls it makes to the service.
type gatewayClient struct {
	client *gateway.Client
	calls  *countingTransport
	stop   context.CancelFunc
	done   chan error
}

// startGateway starts a client of svc and waits until it follows the
// notices and is current.
func (b *bench) startGateway(ctx context.Context, svc *instance) (*gatewayClient, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 64, 64
	calls := &countingTransport{base: t}
	c, err := gateway.New(gateway.Config{
		ServiceURL: svc.URL,
		NATSURL:    b.nats.url,
		Notices:    b.nats.notices,
		HTTPClient: &http.Client{Transport: calls},
		Logger:     slog.New(slog.NewTextHandler(b.progress, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	g := &gatewayClient{client: c, calls: calls, stop: stop, done: make(chan error, 1)}
	go func() { g.done <- c.Run(runCtx) }()
	select {
	case <-c.Ready():
	case err := <-g.done:
		g.done <- err
		g.close()
		return nil, fmt.Errorf("gateway client stopped before following the notices: %w", err)
	case <-time.After(b.cfg.currentTimeout):
		g.close()
		return nil, fmt.Errorf("gateway client not following stream %s on NATS %s after %s", b.nats.notices.Stream, b.nats.url, b.cfg.currentTimeout)
	case <-ctx.Done():
		g.close()
		return nil, ctx.Err()
	}
	// Current alone would accept a heartbeat up to StaleAfter (5 s) old.
	current := func() bool { return c.Current() && c.Staleness() <= currentBound }
	if err := b.waitCurrent(ctx, "the gateway client", current, c.AppliedCount); err != nil {
		g.close()
		return nil, err
	}
	return g, nil
}

// servedGateway starts the service on the scratch database, waits until it
// follows the notices, and starts a gateway client on it whose cache is
// primed with keys. The caller closes both.
func (b *bench) servedGateway(ctx context.Context, scenario string, keys []verifyKey) (*instance, *gatewayClient, error) {
	svc, err := b.startService(ctx, b.scratch, serviceOptions{NATS: true})
	if err != nil {
		return nil, nil, err
	}
	if err := b.waitServiceCurrent(ctx, svc); err != nil {
		svc.close()
		return nil, nil, err
	}
	gw, err := b.startGateway(ctx, svc)
	if err != nil {
		svc.close()
		return nil, nil, err
	}
	start := time.Now()
	if err := gw.prime(ctx, keys); err != nil {
		gw.close()
		svc.close()
		return nil, nil, err
	}
	fmt.Fprintf(b.progress, "%s: gateway client's cache primed with %s keys in %s\n",
		scenario, thousands(int64(len(keys))), time.Since(start).Round(10*time.Millisecond))
	return svc, gw, nil
}

// close stops the client and closes its NATS connection.
func (g *gatewayClient) close() {
	g.stop()
	<-g.done
	g.client.Close()
}

// prime verifies each key once through the client, filling its cache, and
// checks that each is valid.
func (g *gatewayClient) prime(ctx context.Context, keys []verifyKey) error {
	err := forEach(ctx, len(keys), 8, func(ctx context.Context, i int) error {
		v, err := g.client.Verify(ctx, keys[i].secret, keys[i].org)
		if err != nil {
			return err
		}
		if !v.Valid() {
			return fmt.Errorf("key %d refused: %s", i, v.Reason)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prime the gateway client's cache: %w", err)
	}
	if positives, _ := g.client.Cache().Len(); positives < len(keys) {
		return fmt.Errorf("prime the gateway client's cache: %d keys verified, %d cached", len(keys), positives)
	}
	return nil
}

// countingTransport counts the requests it carries.
type countingTransport struct {
	base http.RoundTripper
	n    atomic.Int64
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.base.RoundTrip(r)
}

// loadGatewayKeys bulk-loads n valid keys for a scenario, spread over a few
// organizations, and returns them with their ids and plaintexts.
func (b *bench) loadGatewayKeys(ctx context.Context, label string, n int) ([]verifyKey, error) {
	keys := make([]verifyKey, n)
	now := time.Now()
	start := now
	err := b.importKeys(ctx, b.scratch, label, n, func(i int) keySpec {
		return keySpec{
			org:     "bench-" + label + "-" + b.runID + "-" + strconv.Itoa(i%verifyOrgs),
			name:    "gateway-key-" + strconv.Itoa(i),
			created: now.Add(-time.Duration(n-i) * time.Millisecond),
		}
	}, func(i int, k newKey) {
		keys[i] = verifyKey{org: k.events[0].OrgID, id: k.events[0].KeyID, secret: k.secret}
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(b.progress, "%s: %s keys loaded in %s\n", label, thousands(int64(n)), time.Since(start).Round(100*time.Millisecond))
	return keys, nil
}
