package eventstore

import "github.com/prometheus/client_golang/prometheus"

// newAppendGroups is the size of each appending transaction, in appends: 1
// when appends come one at a time, more as concurrent commands share a
// commit (see Store.Append).
func newAppendGroups() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keyledger_append_group_size",
		Help:    "Appends (commands) committed together in one transaction.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
	})
}

// newGroupsSplit counts the groups of appends that failed and were tried
// again one append at a time, so that only the one at fault failed.
func newGroupsSplit() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyledger_append_groups_split_total",
		Help: "Groups of appends that failed (a conflict, a bad value) and were tried again one append at a time.",
	})
}

// newLockWaits counts the groups of appends that waited on a lock for
// longer than a one-round-trip transaction may, and ran again as an explicit
// transaction (see Store.commitAppends).
func newLockWaits() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyledger_append_lock_waits_total",
		Help: "Groups of appends that waited on a lock for over " + fastLockTimeout.String() +
			" and ran again as an explicit transaction (BEGIN, then COMMIT once the statements succeeded).",
	})
}

// newNotifies counts the NOTIFYs sent to wake readers in other processes.
func newNotifies() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keyledger_commit_notifies_total",
		Help: "NOTIFYs sent to announce commits to readers in other processes (none while no other process listens).",
	})
}

// Register adds the store's metrics to reg.
func (s *Store) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{s.appendGroups, s.groupsSplit, s.lockWaits, s.notifies} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
