package eventstore

import "github.com/prometheus/client_golang/prometheus"

// appendGroups is the size of each appending transaction, in appends: 1
// when appends come one at a time, more as concurrent commands share a
// commit (see Store.Append).
func newAppendGroups() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keyledger_append_group_size",
		Help:    "Appends (commands) committed together in one transaction.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
	})
}

// Register adds the store's metrics to reg.
func (s *Store) Register(reg prometheus.Registerer) error {
	return reg.Register(s.appendGroups)
}
