package sealer_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
)

func TestVerifyPassesOnAnUntouchedLedgerWithSeveralCheckpoints(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 10)
	b.seal(t)
	b.populate(t, 25)
	size := b.seal(t)
	b.populate(t, 2) // committed, not sealed yet: the tail

	var progress []uint64
	rep, err := sealer.Verify(testContext(t), b.pool, b.verifier, func(n uint64) { progress = append(progress, n) })
	require.NoError(t, err)
	require.Equal(t, size, rep.Sealed)
	require.Equal(t, 2, rep.Checkpoints)
	require.EqualValues(t, 3, rep.Unsealed, "two keys and one revocation wait for the sealer")
	require.Equal(t, size, progress[len(progress)-1])
}

// positionOf returns the position of the event sealed at seq.
func positionOf(t *testing.T, b *bundle, seq int) int64 {
	t.Helper()
	var pos int64
	require.NoError(t, b.pool.QueryRow(testContext(t), `SELECT position FROM seals WHERE seq = $1`, seq).Scan(&pos))
	return pos
}

// TestVerifyNamesTheFirstBadSeqOfEveryKindOfTampering protects DESIGN 6.5:
// whatever an attacker with the superuser's keys changes, removes or
// reorders, verification fails and names the first bad seq.
func TestVerifyNamesTheFirstBadSeqOfEveryKindOfTampering(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		tamper  func(b *bundle) []string
		wantSeq int64
	}{
		{"one byte of an event's data changed", func(b *bundle) []string {
			return []string{fmt.Sprintf(`UPDATE events SET data = jsonb_set(data, '{key_hash}', to_jsonb(overlay(data->>'key_hash'
				placing CASE WHEN left(data->>'key_hash', 1) = '0' THEN '1' ELSE '0' END from 1 for 1))) WHERE position = %d`, positionOf(t, b, 17))}
		}, 17},
		{"one byte of a data member's name changed", func(b *bundle) []string {
			return []string{fmt.Sprintf(`UPDATE events SET data = (data - 'expires_at') || jsonb_build_object('expires_aX', data->'expires_at')
				WHERE position = %d`, positionOf(t, b, 12))}
		}, 12},
		{"the actor changed", func(b *bundle) []string {
			return []string{fmt.Sprintf(`UPDATE events SET actor = 'mallory' WHERE position = %d`, positionOf(t, b, 9))}
		}, 9},
		{"the time of an event changed by a microsecond", func(b *bundle) []string {
			return []string{fmt.Sprintf(`UPDATE events SET occurred_at = occurred_at + interval '1 microsecond' WHERE position = %d`, positionOf(t, b, 20))}
		}, 20},
		{"a row deleted", func(b *bundle) []string {
			return []string{fmt.Sprintf(`DELETE FROM events WHERE position = %d`, positionOf(t, b, 11))}
		}, 11},
		{"two rows' contents swapped", func(b *bundle) []string {
			p1, p2 := positionOf(t, b, 6), positionOf(t, b, 14)
			cols := `id, org_id, key_id, stream_version, type, actor, occurred_at, data`
			return []string{
				`CREATE TEMP TABLE swap AS SELECT position, ` + cols + ` FROM events WHERE position IN (` + fmt.Sprint(p1, ",", p2) + `)`,
				fmt.Sprintf(`DELETE FROM events WHERE position IN (%d, %d)`, p1, p2),
				fmt.Sprintf(`INSERT INTO events (position, transaction_id, %[1]s) OVERRIDING SYSTEM VALUE
					SELECT CASE position WHEN %[2]d THEN %[3]d ELSE %[2]d END, pg_current_xact_id(), %[1]s FROM swap`, cols, p1, p2),
			}
		}, 6},
		{"the tail truncated", func(b *bundle) []string {
			return []string{fmt.Sprintf(`DELETE FROM events WHERE position >= %d`, positionOf(t, b, 30))}
		}, 30},
		{"the tail truncated in the events and the seals", func(b *bundle) []string {
			return []string{
				fmt.Sprintf(`DELETE FROM events WHERE position >= %d`, positionOf(t, b, 30)),
				`DELETE FROM seals WHERE seq >= 30`,
			}
		}, 30},
		{"a seal removed from the middle", func(b *bundle) []string {
			return []string{`DELETE FROM seals WHERE seq = 8`}
		}, 8},
		{"an event and its leaf hash rewritten together", func(b *bundle) []string {
			return []string{
				fmt.Sprintf(`UPDATE events SET actor = 'mallory' WHERE position = %d`, positionOf(t, b, 21)),
				// The attacker cannot sign, so the root no longer matches:
				// the first bad seq is the start of the checkpoint range.
				`UPDATE seals SET leaf_hash = sha256('forged') WHERE seq = 21`,
			}
		}, 21},
		{"an event inserted behind the sealer", func(b *bundle) []string {
			// In the transaction of seq 24's event, after it: in ledger
			// order, between seq 24 and seq 25.
			p := positionOf(t, b, 24)
			return []string{fmt.Sprintf(`INSERT INTO events (position, transaction_id, id, org_id, key_id, stream_version, type, actor, occurred_at, data)
				OVERRIDING SYSTEM VALUE
				SELECT 100000, transaction_id, gen_random_uuid(), org_id, key_id || 'x', 1, type, actor, occurred_at, data
				FROM events WHERE position = %d`, p)}
		}, 25},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.populate(t, 30) // 40 events
			b.seal(t)
			_, err := b.verify(t)
			require.NoError(t, err, "before tampering")

			b.tamper(t, c.tamper(b)...)
			_, err = b.verify(t)
			var p *sealer.Problem
			require.True(t, errors.As(err, &p), "verification must fail with a problem, got %v", err)
			require.Equal(t, c.wantSeq, p.Seq, "%v", p)
			require.Contains(t, p.Error(), fmt.Sprintf("first bad seq %d", p.Seq))
		})
	}
}

func TestVerifyRefusesACheckpointSignedByAnotherKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 5)
	b.seal(t)
	_, other, err := audit.GenerateKey("keyledger.test/log")
	require.NoError(t, err)
	v, err := audit.NewVerifier(other)
	require.NoError(t, err)
	_, err = sealer.Verify(testContext(t), b.pool, v, nil)
	var p *sealer.Problem
	require.ErrorAs(t, err, &p)
	require.Contains(t, p.Error(), "does not verify")
}
