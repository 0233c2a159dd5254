package sealer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
)

// problemOf requires err to be a verification problem and returns it.
func problemOf(t *testing.T, err error) *sealer.Problem {
	t.Helper()
	var p *sealer.Problem
	require.True(t, errors.As(err, &p), "verification must fail with a problem, got %v", err)
	return p
}

// An event slipped in behind the sealer must be found even while the sealer
// keeps sealing during the check: seals committed after the last chunk was
// read must not count against it.
func TestVerifyFindsAnEventInsertedBehindTheSealerWhileTheSealerRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 30) // 40 events
	b.seal(t)
	p := positionOf(t, b, 24)
	b.tamper(t, fmt.Sprintf(`INSERT INTO events (position, transaction_id, id, org_id, key_id, stream_version, type, actor, occurred_at, data)
		OVERRIDING SYSTEM VALUE
		SELECT 100000, transaction_id, gen_random_uuid(), org_id, key_id || 'x', 1, type, actor, occurred_at, data
		FROM events WHERE position = %d`, p))

	sealedDuring := false
	_, err := sealer.Verify(testContext(t), b.pool, b.verifier, func(uint64) {
		if sealedDuring {
			return
		}
		sealedDuring = true
		// The running sealer seals one more event while the check runs.
		ctx := context.Background()
		_, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: "late", Actor: "alice"}, "")
		require.NoError(t, err)
		require.EqualValues(t, 41, b.seal(t))
	})
	require.True(t, sealedDuring)
	pr := problemOf(t, err)
	require.EqualValues(t, 25, pr.Seq, "%v", pr)
	require.Contains(t, pr.Error(), "inserted behind the sealer")
}

// When an event and its leaf hash (and the tree nodes) are rewritten
// together, each seal matches its event and only the root signed after
// them disagrees: the problem names the range that checkpoint added, and
// its first seq.
func TestVerifyNamesTheRangeOfAConsistentRewrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 8)
	first := b.seal(t)
	b.populate(t, 20)
	size := b.seal(t)
	require.Less(t, first, uint64(21))
	require.Greater(t, size, uint64(21))

	b.tamperTx(t, func(ctx context.Context, tx pgx.Tx) {
		require.NoError(t, sealer.ForgeEvent(ctx, tx, 21, `actor = 'mallory'`))
	})
	_, err := b.verify(t)
	pr := problemOf(t, err)
	require.EqualValues(t, first, pr.Seq, "the first seq that the checkpoints cannot vouch for")
	require.EqualValues(t, size-1, pr.Last)
	require.Contains(t, pr.Error(), fmt.Sprintf("first bad seq %d", first))
	require.Contains(t, pr.Error(), fmt.Sprintf("within seq %d..%d", first, size-1))
}

// A hole in the seqs longer than a chunk of Verify's reads is a missing
// seq, not the end of the seals: here it would otherwise pass, since the
// checkpoint after the hole was deleted too.
func TestVerifyFindsAHoleLongerThanAChunk(t *testing.T) {
	// Not parallel: it changes the chunk size of every Verify.
	sealer.SetVerifyChunk(t, 5)
	b := setup(t)
	b.populate(t, 8)
	first := b.seal(t)
	b.populate(t, 30)
	size := b.seal(t)
	require.Less(t, first, uint64(20))
	require.Greater(t, size, uint64(41))
	_, err := b.verify(t)
	require.NoError(t, err, "before tampering")

	b.tamper(t, `DELETE FROM seals WHERE seq BETWEEN 20 AND 40`, fmt.Sprintf(`DELETE FROM checkpoints WHERE tree_size = %d`, size))
	_, err = b.verify(t)
	pr := problemOf(t, err)
	require.EqualValues(t, 20, pr.Seq, "%v", pr)
	require.Contains(t, pr.Error(), "missing from the seals table (the next seal is seq 41)")
}
