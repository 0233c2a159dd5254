package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyledger/keyledger/api"
	gwclient "github.com/keyledger/keyledger/consumers/gateway"
	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/service"
)

const gatewaySummary = `Runs a reverse proxy that lets through only requests whose x-api-key is valid
for their x-organization-id. Keys are checked by the gateway client: from a
local cache kept current by the ledger's notices on NATS, and through the
keyledger service on a miss. A refused request gets 401 with the reason, as
/v1/verify gives it; when the key cannot be checked (the notices are stale and
the service does not answer) the request gets 503: the gateway fails closed.
A forwarded request carries X-Keyledger-Key-Id, and no x-api-key unless
--keep-key-header. The proxy serves no path of its own; /metrics, /healthz and
/readyz are served on --metrics-listen, if set.

The proxy starts listening once it follows the notices stream, so that no
revocation published later is missed; until then it waits.`

// gatewayConfig is the configuration of keyledger gateway.
type gatewayConfig struct {
	Listen          string
	MetricsListen   string
	Upstream        string
	ServiceURL      string
	NATSURL         string
	KeepKeyHeader   bool
	StaleAfter      time.Duration
	SubjectPrefix   string
	Stream          string
	KeyPrefix       string
	LogLevel        string
	ShutdownTimeout time.Duration

	// Read as text, checked in validate so that a bad value is named by
	// its variable with the others.
	keepKeyHeader, staleAfter string
}

func (c *gatewayConfig) settings() []setting {
	return []setting{
		{"listen", "KEYLEDGER_GATEWAY_LISTEN", "127.0.0.1:8081", "host:port the proxy listens on", &c.Listen},
		{"upstream", "KEYLEDGER_GATEWAY_UPSTREAM", "", "base URL of the service behind the proxy, such as http://127.0.0.1:9000 (required)", &c.Upstream},
		{"service", "KEYLEDGER_SERVICE_URL", "", "base URL of the keyledger service, asked on a cache miss, such as http://127.0.0.1:8080 (required)", &c.ServiceURL},
		{"nats", "KEYLEDGER_NATS_URL", "", "NATS server URL(s) the notices are read from, comma-separated, such as nats://127.0.0.1:4222 (required)", &c.NATSURL},
		{"stale-after", "KEYLEDGER_GATEWAY_STALE_AFTER", gwclient.DefaultStaleAfter.String(), "how long cached keys are trusted after the gateway was last known current with the notices; after that each request is re-checked with the service, and refused if it does not answer", &c.staleAfter},
		{"subject-prefix", "KEYLEDGER_NATS_SUBJECT_PREFIX", notices.DefaultPrefix, "first token(s) of the notice subjects, as the service publishes them", &c.SubjectPrefix},
		{"stream", "KEYLEDGER_NATS_STREAM", notices.DefaultStream, "JetStream stream that keeps the notices", &c.Stream},
		{"key-prefix", "KEYLEDGER_KEY_PREFIX", domain.DefaultKeyPrefix, "prefix of the ledger's keys; other keys are refused as malformed without a lookup", &c.KeyPrefix},
		{"metrics-listen", "KEYLEDGER_GATEWAY_METRICS_LISTEN", "", "host:port serving /metrics, /healthz and /readyz; empty serves none", &c.MetricsListen},
		{"log-level", "KEYLEDGER_LOG_LEVEL", "info", "log level: debug, info, warn or error", &c.LogLevel},
	}
}

const keepKeyHeaderEnv = "KEYLEDGER_GATEWAY_KEEP_KEY_HEADER"

// parseGatewayConfig reads flags over environment variables over defaults,
// and reports every bad value at once, each by its variable.
func parseGatewayConfig(args []string, getenv func(string) string, stderr io.Writer) (gatewayConfig, error) {
	var c gatewayConfig
	fs := flag.NewFlagSet("keyledger gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addSettings(fs, c.settings(), getenv)
	c.keepKeyHeader = getenv(keepKeyHeaderEnv)
	keep, keepErr := parseBoolEnv(c.keepKeyHeader)
	fs.BoolVar(&c.KeepKeyHeader, "keep-key-header", keep,
		fmt.Sprintf("forward x-api-key to the upstream; by default it is removed (env %s=true)", keepKeyHeaderEnv))
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for in-flight requests before closing them")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: keyledger gateway --upstream URL --service URL --nats URL [flags]\n\n%s\n\nFlags:\n", gatewaySummary)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.validate(keepErr)
}

func parseBoolEnv(v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("must be true or false, got %q", v)
	}
	return b, nil
}

// validate checks every value and names the variable of each bad one.
func (c *gatewayConfig) validate(keepErr error) error {
	var errs []error
	bad := func(env, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", env, fmt.Sprintf(format, args...)))
	}
	if err := checkListenAddr(c.Listen); err != nil {
		bad("KEYLEDGER_GATEWAY_LISTEN", "%v", err)
	}
	if c.MetricsListen != "" {
		if err := checkListenAddr(c.MetricsListen); err != nil {
			bad("KEYLEDGER_GATEWAY_METRICS_LISTEN", "%v", err)
		} else if c.MetricsListen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
			bad("KEYLEDGER_GATEWAY_METRICS_LISTEN", "must differ from the proxy's address: the proxy serves no path of its own")
		}
	}
	checkHTTPURL := func(env, v, example string) {
		if v == "" {
			bad(env, "required, such as %s", example)
			return
		}
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(env, "must be an http or https URL such as %s, got %q", example, v)
		}
	}
	checkHTTPURL("KEYLEDGER_GATEWAY_UPSTREAM", c.Upstream, "http://127.0.0.1:9000")
	checkHTTPURL("KEYLEDGER_SERVICE_URL", c.ServiceURL, "http://127.0.0.1:8080")
	if c.NATSURL == "" {
		bad("KEYLEDGER_NATS_URL", "required: the gateway reads the notices from the NATS server the service publishes to, such as nats://127.0.0.1:4222")
	} else if err := checkNATSURL(c.NATSURL); err != nil {
		bad("KEYLEDGER_NATS_URL", "%v", err)
	}
	if keepErr != nil {
		bad(keepKeyHeaderEnv, "%v", keepErr)
	}
	if d, err := time.ParseDuration(c.staleAfter); err != nil || d <= 0 {
		bad("KEYLEDGER_GATEWAY_STALE_AFTER", "must be a positive duration such as 5s, got %q", c.staleAfter)
	} else {
		c.StaleAfter = d
	}
	checkNotices(c.SubjectPrefix, c.Stream, bad)
	checkCommon(c.KeyPrefix, c.LogLevel, c.ShutdownTimeout, bad, &errs)
	return joinInvalid(errs)
}

// gateway runs keyledger gateway until ctx ends.
func gateway(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseGatewayConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel)
	upstream, _ := url.Parse(cfg.Upstream) // checked by validate

	nc, err := notices.Connect(cfg.NATSURL, "keyledger-gateway", log)
	if err != nil {
		return fmt.Errorf("KEYLEDGER_NATS_URL: %w", err)
	}
	defer nc.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	client, err := gwclient.New(gwclient.Config{
		ServiceURL: cfg.ServiceURL,
		NATS:       nc,
		Notices:    notices.Config{Prefix: cfg.SubjectPrefix, Stream: cfg.Stream},
		StaleAfter: cfg.StaleAfter,
		KeyPrefix:  cfg.KeyPrefix,
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return err
	}

	// Follow the notices in the background; serve once following.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan error, 1)
	go func() { runDone <- client.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()
	if following, err := waitForNotices(ctx, client, runDone, cfg, log, stdout); !following {
		return err // nil when ctx ended first
	}

	proxy := api.NewGatewayProxy(client, upstream, api.GatewayOptions{KeepKeyHeader: cfg.KeepKeyHeader, Logger: log})
	servers := []*listening{}
	defer func() {
		for _, s := range servers {
			_ = s.srv.Close()
		}
	}()
	front, err := listen(cfg.Listen, "KEYLEDGER_GATEWAY_LISTEN", proxy, log)
	if err != nil {
		return err
	}
	servers = append(servers, front)
	if cfg.MetricsListen != "" {
		m, err := listen(cfg.MetricsListen, "KEYLEDGER_GATEWAY_METRICS_LISTEN", gatewayOps(client, reg), log)
		if err != nil {
			return err
		}
		servers = append(servers, m)
		fmt.Fprintf(stdout, "keyledger gateway: metrics on http://%s/metrics\n", m.ln.Addr())
	}
	fmt.Fprintf(stdout, "keyledger gateway: proxying http://%s to %s\n", front.ln.Addr(), upstream.Redacted())
	log.Info("gateway serving", slog.String("addr", front.ln.Addr().String()), slog.String("upstream", upstream.Redacted()),
		slog.String("service", cfg.ServiceURL), slog.Duration("stale_after", cfg.StaleAfter))

	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.srv.Serve(s.ln) }()
	}
	select {
	case err := <-errc:
		return err
	case err := <-runDone:
		runDone <- err // for the deferred wait
		return fmt.Errorf("notices: %w", err)
	case <-ctx.Done():
	}
	log.Info("gateway shutting down: draining in-flight requests", slog.Duration("timeout", cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	for _, s := range servers {
		if err := s.srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	log.Info("gateway stopped")
	return nil
}

// waitForNotices waits until the client follows the notices stream, saying
// so now and then: serving earlier could cache a key whose revocation the
// follower will never see.
func waitForNotices(ctx context.Context, client *gwclient.Client, runDone chan error, cfg gatewayConfig, log *slog.Logger, stdout io.Writer) (following bool, err error) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-client.Ready():
			return true, nil
		case err := <-runDone:
			runDone <- err
			return false, fmt.Errorf("KEYLEDGER_NATS_URL: following stream %s: %w", cfg.Stream, err)
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
			fmt.Fprintf(stdout, "keyledger gateway: waiting for the notices stream %s on %s\n", cfg.Stream, cfg.NATSURL)
			log.Warn("gateway waiting for the notices stream", slog.String("stream", cfg.Stream))
		}
	}
}

type listening struct {
	ln  net.Listener
	srv *http.Server
}

// listen opens addr for h, with serve's server settings but no read or
// write timeout: proxied requests and responses may stream for as long as
// the client and the upstream take.
func listen(addr, env string, h http.Handler, log *slog.Logger) (*listening, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", env, err)
	}
	srv := service.NewHTTPServer(h, log)
	srv.ReadTimeout, srv.WriteTimeout = 0, 0
	return &listening{ln: ln, srv: srv}, nil
}

// gatewayOps serves the gateway's own endpoints, apart from the proxy so
// that they never shadow an upstream path.
func gatewayOps(client *gwclient.Client, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
	})
	// Ready while cached keys are trusted; a stale gateway still serves,
	// through the service, but a load balancer may prefer another.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !client.Current() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, `{"ready":false,"staleness_seconds":%.3f}`+"\n", client.Staleness().Seconds())
			return
		}
		_, _ = io.WriteString(w, `{"ready":true}`+"\n")
	})
	return mux
}
