package projections

// SetSearchPlan sets how many keys a search's first walk tests, how many
// matches among them make it walk on, and how many keys its second walk
// tests at most (see ListKeys), so that a test reaches every step with a
// few keys.
func SetSearchPlan(v *Views, sample, dense, most int) {
	if sample < 1 || dense < 1 || most < 1 {
		panic("SetSearchPlan: each bound must be at least 1")
	}
	v.search = searchPlan{sample, dense, most}
}
