package sealer_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
)

func export(t *testing.T, b *bundle, org string, since time.Time) []string {
	t.Helper()
	var buf bytes.Buffer
	_, err := sealer.Export(testContext(t), b.pool, org, since, &buf, nil)
	require.NoError(t, err)
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

func verifyLines(b *bundle, lines []string) (audit.ExportSummary, error) {
	return audit.VerifyExport(strings.NewReader(strings.Join(lines, "\n")+"\n"), b.vkey, nil)
}

func TestAnExportVerifiesOfflineAndFailsWhenALineIsAlteredOrRemoved(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 30) // acme: 15 keys, 5 revoked
	b.seal(t)
	lines := export(t, b, "acme", time.Time{})
	require.Len(t, lines, 1+20)

	sum, err := verifyLines(b, lines)
	require.NoError(t, err)
	require.EqualValues(t, 20, sum.Events)
	require.EqualValues(t, 40, sum.TreeSize)

	without := func(i int) []string {
		return append(append([]string{}, lines[:i]...), lines[i+1:]...)
	}
	for name, c := range map[string]struct {
		lines []string
		want  string
	}{
		"a line altered":          {replaceIn(lines, 5, `"actor":"alice"`, `"actor":"mallory"`), "line 6"},
		"a proof altered":         {flipProof(lines, 7), "line 8"},
		"a seq altered":           {replaceIn(lines, 9, `"seq":`, `"seq":1`), "line 10"},
		"a middle line removed":   {without(10), "line 11"},
		"the first line removed":  {without(1), "line 2"},
		"the last line removed":   {without(20), "removed"},
		"the header altered":      {replaceIn(lines, 0, `\n`, `\n1`), "line 1"},
		"two lines swapped":       {swap(lines, 3, 4), "line 4"},
		"another org's line":      {replaceIn(lines, 2, `"org_id":"acme"`, `"org_id":"globex"`), "line 3"},
		"an empty file":           {[]string{""}, "line 1"},
		"the header only, events": {lines[:1], "removed"},
	} {
		_, err := verifyLines(b, c.lines)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), c.want, name)
	}

	// The checkpoint checks only with the log's key.
	_, other, err := audit.GenerateKey("keyledger.test/log")
	require.NoError(t, err)
	_, err = audit.VerifyExport(strings.NewReader(strings.Join(lines, "\n")), other, nil)
	require.ErrorContains(t, err, "signature")
}

func TestAnExportSinceATimeVerifiesItsChainFromTheFirstLine(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 20)
	since := b.now
	b.populate(t, 10)
	b.seal(t)
	lines := export(t, b, "globex", since)
	require.Greater(t, len(lines), 2)
	require.Less(t, len(lines), 1+15)
	_, err := verifyLines(b, lines)
	require.NoError(t, err)
	require.Contains(t, lines[1], `"org_prev_seq":`, "the first line names its predecessor outside the export")
	require.NotContains(t, lines[1], `"org_prev_seq":null`)

	_, err = sealer.Export(testContext(t), b.pool, "bad org!", time.Time{}, &bytes.Buffer{}, nil)
	require.Error(t, err)
}

func replaceIn(lines []string, i int, old, new string) []string {
	out := append([]string{}, lines...)
	out[i] = strings.Replace(out[i], old, new, 1)
	return out
}

// flipProof changes one hex digit of the first hash of line i's proof.
func flipProof(lines []string, i int) []string {
	out := append([]string{}, lines...)
	at := strings.Index(out[i], `"proof":["`) + len(`"proof":["`)
	c := byte('0')
	if out[i][at] == '0' {
		c = '1'
	}
	out[i] = out[i][:at] + string(c) + out[i][at+1:]
	return out
}

func swap(lines []string, i, j int) []string {
	out := append([]string{}, lines...)
	out[i], out[j] = out[j], out[i]
	return out
}

// TestTwoSealersOneActiveGaplessUnderConcurrentAppends protects the single
// sealer of DESIGN 6.5: with two sealers running while clients append, one
// leads at a time, and every event gets exactly one seq, without a gap.
func TestTwoSealersOneActiveGaplessUnderConcurrentAppends(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()

	var regs []*prometheus.Registry
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		s, err := sealer.New(b.store, sealer.Options{Signer: b.signer, Batch: 16, Poll: 20 * time.Millisecond,
			CheckpointEvery: 50 * time.Millisecond, LeaderInterval: 50 * time.Millisecond, Registry: reg, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		wg.Add(1)
		go func() { defer wg.Done(); s.Run(ctx) }()
	}

	leading := func() int {
		n := 0
		for _, r := range regs {
			mfs, _ := r.Gather()
			for _, mf := range mfs {
				if mf.GetName() == "keyledger_sealer_leading" && mf.GetMetric()[0].GetGauge().GetValue() == 1 {
					n++
				}
			}
		}
		return n
	}
	var maxLeading atomic.Int64
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(2 * time.Millisecond):
				if n := int64(leading()); n > maxLeading.Load() {
					maxLeading.Store(n)
				}
			}
		}
	}()

	var appenders sync.WaitGroup
	for w := 0; w < 4; w++ {
		appenders.Add(1)
		go func() {
			defer appenders.Done()
			l := &domain.Ledger{Store: b.store, KeyPrefix: "kl", Now: time.Now}
			for i := 0; i < 40; i++ {
				_, err := l.GenerateKey(ctx, domain.GenerateKey{OrgID: []string{"acme", "globex", "initech"}[i%3], Name: "k"}, "")
				require.NoError(t, err)
			}
		}()
	}
	appenders.Wait()

	require.Eventually(t, func() bool {
		var sealed int64
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM seals`).Scan(&sealed)
		var cp int64
		_ = b.pool.QueryRow(ctx, `SELECT coalesce(max(tree_size), 0) FROM checkpoints`).Scan(&cp)
		return sealed == 160 && cp == 160
	}, 20*time.Second, 10*time.Millisecond, "every event sealed and checkpointed")
	close(stopWatch)
	<-watchDone
	require.EqualValues(t, 1, maxLeading.Load(), "one sealer leads at a time")
	require.Equal(t, 1, leading())

	var n, maxSeq, positions int64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*), max(seq), count(DISTINCT position) FROM seals`).Scan(&n, &maxSeq, &positions))
	require.EqualValues(t, 160, n)
	require.EqualValues(t, 159, maxSeq, "gapless from 0")
	require.EqualValues(t, 160, positions, "each event sealed once")
	rep, err := b.verify(t)
	require.NoError(t, err)
	require.EqualValues(t, 160, rep.Sealed)

	sealedTotal := 0.0
	for _, r := range regs {
		mfs, _ := r.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "keyledger_sealed_events_total" {
				sealedTotal += mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
	}
	require.EqualValues(t, 160, sealedTotal, "the two sealers together sealed each event once")
	cancel()
	wg.Wait()
}

// TestAnExportSinceKeepsTheChainWhenTimesAreOutOfSeqOrder: seq order is not
// occurred_at order (commands race, instances' clocks differ). An export
// since T starts at the first event, in seq order, that occurred at or after
// T, and keeps what follows even if it occurred earlier: dropping it would
// leave a hole in the organization's chain, and an honest export would fail
// to verify offline.
func TestAnExportSinceKeepsTheChainWhenTimesAreOutOfSeqOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	start := b.now
	for _, offset := range []time.Duration{10 * time.Second, 5 * time.Second, 20 * time.Second} {
		b.now = start.Add(offset)
		_, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "initech", Name: "k", Actor: "alice"}, "")
		require.NoError(t, err)
	}
	b.seal(t)
	lines := export(t, b, "initech", start.Add(7*time.Second))
	require.Len(t, lines, 1+3, "the event that occurred at 5 s is kept: it comes after the one at 10 s")
	sum, err := verifyLines(b, lines)
	require.NoError(t, err)
	require.EqualValues(t, 3, sum.Events)

	none := export(t, b, "initech", start.Add(time.Minute))
	require.Len(t, none, 1, "nothing occurred after a minute: the header only")
}
