package projections

// SetListWalk sets how many keys a search walks before it looks its term up
// (see ListKeys), so that a test reaches the second step with a few keys.
func SetListWalk(v *Views, n int) { v.walk = n }
