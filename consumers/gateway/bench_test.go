package gateway_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

// hitHarness is a current client with one key cached. One heartbeat keeps
// it current for a minute, so no background work allocates while it is
// measured.
func hitHarness(tb testing.TB) (*harness, string) {
	tb.Helper()
	h := setup(tb, withStaleAfter(time.Minute))
	h.env.Heartbeat()
	h.waitCurrent(tb)
	_, secret := h.env.Generate(org, "hot", nil)
	v, err := h.client.Verify(context.Background(), secret, org)
	require.NoError(tb, err)
	require.True(tb, v.Valid())
	return h, secret
}

// TestACacheHitAllocatesNothing is not parallel: AllocsPerRun counts the
// whole process's allocations.
func TestACacheHitAllocatesNothing(t *testing.T) {
	h, secret := hitHarness(t)
	ctx := context.Background()
	var v domain.Verification
	var err error
	calls := h.calls(func() {
		allocs := testing.AllocsPerRun(1000, func() { v, err = h.client.Verify(ctx, secret, org) })
		require.Zero(t, allocs, "allocations per cached Verify")
	})
	require.NoError(t, err)
	require.True(t, v.Valid())
	require.Zero(t, calls, "every call was a hit")

	// Refusals decided locally allocate nothing either.
	mistyped := mistype(secret)
	require.Zero(t, testing.AllocsPerRun(1000, func() { v, _ = h.client.Verify(ctx, mistyped, org) }))
	require.Zero(t, testing.AllocsPerRun(1000, func() { v, _ = h.client.Verify(ctx, secret, other) }))
}

// BenchmarkVerifyHit is the gateway-verify figure: a cached key, verified
// on one goroutine. Target: under 1 microsecond and 0 allocations.
func BenchmarkVerifyHit(b *testing.B) {
	h, secret := hitHarness(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		v, err := h.client.Verify(ctx, secret, org)
		if err != nil || !v.Valid() {
			b.Fatal("not valid")
		}
	}
}

// BenchmarkVerifyHitParallel is the same on every core, many keys: the
// cache's shards and counters under contention.
func BenchmarkVerifyHitParallel(b *testing.B) {
	h := setup(b, withStaleAfter(time.Minute))
	h.env.Heartbeat()
	h.waitCurrent(b)
	secrets := make([]string, 32)
	for i := range secrets {
		_, secrets[i] = h.env.Generate(org, "hot", nil)
		v, err := h.client.Verify(context.Background(), secrets[i], org)
		require.NoError(b, err)
		require.True(b, v.Valid())
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			v, err := h.client.Verify(ctx, secrets[i%len(secrets)], org)
			if err != nil || !v.Valid() {
				b.Error("not valid")
				return
			}
			i++
		}
	})
}
