package relay

import "github.com/prometheus/client_golang/prometheus"

// metrics are what an operator watches of the relay. Watermill's router
// metrics (handler and publish durations, by handler) come besides.
type metrics struct {
	leading       prometheus.Gauge
	published     prometheus.Counter
	position      prometheus.Gauge
	lagEvents     prometheus.Gauge
	lagSeconds    prometheus.Gauge
	publishErrors prometheus.Counter
	retries       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		leading: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyledger_relay_leading",
			Help: "1 while this process is the active relay, else 0."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyledger_relay_published_total",
			Help: "Events published to JetStream and acknowledged (a republished duplicate counts again)."}),
		position: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyledger_relay_position",
			Help: "Ledger position of the last event published."}),
		lagEvents: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyledger_relay_lag_events",
			Help: "Committed events not yet published (counted up to 100000), measured about once a second."}),
		lagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyledger_relay_lag_seconds",
			Help: "Age of the oldest committed event not yet published; 0 when caught up."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyledger_relay_publish_errors_total",
			Help: "Failed attempts to publish an event or to make the stream."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyledger_relay_publish_retries_total",
			Help: "Publications retried by the retry middleware."}),
	}
	for _, c := range []prometheus.Collector{m.leading, m.published, m.position, m.lagEvents, m.lagSeconds, m.publishErrors, m.retries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
