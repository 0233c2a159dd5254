package notices

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registerMetrics gives a follower its metrics: what any follower's
// operator watches, whether the follower feeds a gateway or the service.
func (f *Follower) registerMetrics(reg prometheus.Registerer) error {
	delay := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keyledger_notices_delay_seconds",
		Help:    "Time from an event's commit (its occurred_at) to its notice being applied, for the notices the follower's sink reads (the key caches read revocations).",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}})
	f.delay = delay
	for _, c := range []prometheus.Collector{
		delay,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_notices_applied_total",
			Help: "Notices the follower has gone past since it started, whether its sink read them or not."},
			func() float64 { return float64(f.AppliedCount()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_notices_gaps_total",
			Help: "Times notices were found missing from the stream (purged past the follower); cached positives were dropped."},
			func() float64 { return float64(f.gaps.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_notices_staleness_seconds",
			Help: "Seconds since the follower was last known current: it had applied every notice a relay heartbeat vouched for. " +
				"Cached positives are not trusted past the stale-after bound."},
			func() float64 { return f.Staleness().Seconds() }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Staleness is how long ago the follower was last known current; the time
// since it was made if never.
func (f *Follower) Staleness() time.Duration {
	ns := f.currentAt.Load()
	if ns == 0 {
		return f.now().Sub(f.made)
	}
	return f.now().Sub(time.Unix(0, ns))
}
