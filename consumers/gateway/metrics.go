package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/domain"
)

// Results of Verify, as the verifications_total metric labels them.
const (
	resultValid = iota
	resultMissing
	resultMalformed
	resultInvalid
	resultExpired
	resultRevoked
	resultError
	resultCount
)

var resultNames = [resultCount]string{"valid", "missing", "malformed", "invalid", "expired", "revoked", "error"}

func resultIndex(r domain.Reason) int {
	switch r {
	case domain.ReasonMissing:
		return resultMissing
	case domain.ReasonMalformed:
		return resultMalformed
	case domain.ReasonExpired:
		return resultExpired
	case domain.ReasonRevoked:
		return resultRevoked
	}
	return resultInvalid
}

// metrics are the client's own; the cache registers its hits, misses,
// entries and tombstones beside them, and the follower the notices applied,
// their delay from commit and the staleness. The counters are resolved once, so
// that counting a verification costs one atomic add and no allocation.
type metrics struct {
	verifications *prometheus.CounterVec
	results       [resultCount]prometheus.Counter
	serviceErrors prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "keyledger", Subsystem: "gateway",
			Name: "verifications_total", Help: "Verify calls by result: valid, a failure reason, or error (the service could not be asked)."},
			[]string{"result"}),
		serviceErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "keyledger", Subsystem: "gateway",
			Name: "service_errors_total", Help: "Fallback calls to the keyledger service that got no usable answer (Verify failed closed)."}),
	}
	for i, name := range resultNames {
		m.results[i] = m.verifications.WithLabelValues(name)
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, col := range []prometheus.Collector{m.verifications, m.serviceErrors} {
		if err := r.Register(col); err != nil {
			return err
		}
	}
	return nil
}
