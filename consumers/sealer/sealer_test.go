package sealer_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
)

func TestSealerGivesEachEventAGaplessSeqInLedgerOrderAndSignsTheRoot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	b.populate(t, 30) // 30 generated + 10 revoked
	require.EqualValues(t, 40, b.seal(t))

	rows, err := b.pool.Query(ctx, `SELECT s.seq, s.leaf_hash FROM seals s JOIN events e ON e.position = s.position
		ORDER BY e.transaction_id, e.position`)
	require.NoError(t, err)
	var leaves [][]byte
	var seq int64
	var hash []byte
	_, err = pgx.ForEachRow(rows, []any{&seq, &hash}, func() error {
		require.EqualValues(t, len(leaves), seq, "seq follows ledger order without a gap")
		leaves = append(leaves, bytes.Clone(hash))
		return nil
	})
	require.NoError(t, err)
	require.Len(t, leaves, 40)

	signed, err := b.log.Checkpoint(ctx)
	require.NoError(t, err)
	cp, err := audit.OpenCheckpoint(signed, b.verifier)
	require.NoError(t, err)
	require.EqualValues(t, 40, cp.Size)
	root, err := audit.RootAt(40, audit.NewTree(leaves).Nodes)
	require.NoError(t, err)
	require.Equal(t, root, cp.Root, "the signed root is the RFC 6962 root of the leaves")

	// Sealing again with nothing new changes nothing.
	require.EqualValues(t, 40, b.seal(t))
	var checkpoints int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM checkpoints`).Scan(&checkpoints))
	require.Equal(t, 1, checkpoints, "no checkpoint without new events")
}

func TestEventsCarryTheirSeqAndHashOnceSealed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	ids := b.populate(t, 4)
	events := sealer.SealedEvents{Store: b.store, Log: b.log}
	before, err := events.Load(ctx, "acme", ids[0])
	require.NoError(t, err)
	require.Len(t, before, 2)
	require.Nil(t, before[0].Seal, "not sealed yet")

	b.seal(t)
	after, err := events.Load(ctx, "acme", ids[0])
	require.NoError(t, err)
	require.NotNil(t, after[0].Seal)
	require.NotNil(t, after[1].Seal)
	require.Less(t, after[0].Seal.Seq, after[1].Seal.Seq)
	p, err := b.log.InclusionProof(ctx, uint64(after[1].Seal.Seq), 0)
	require.NoError(t, err)
	require.Equal(t, after[1].Seal.Hash, p.LeafHash)

	page, _, err := events.OrgLog(ctx, "globex", "", 50)
	require.NoError(t, err)
	require.Len(t, page, 3, "two keys of globex, one revoked")
	for _, e := range page {
		require.NotNil(t, e.Seal, "event %d of the org log", e.Position)
	}
}

func TestInclusionAndConsistencyProofsVerifyAgainstSignedCheckpoints(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	// Sizes that make complete subtrees above level 4 (stored) and below
	// (folded from leaves), and ragged right edges.
	b.populate(t, 15)
	size1 := b.seal(t)
	b.populate(t, 40)
	size2 := b.seal(t)
	require.Greater(t, size2, uint64(32))

	cps := checkpoints(t, b)
	require.Len(t, cps, 2)
	require.Equal(t, size1, cps[0].Size)
	require.Equal(t, size2, cps[1].Size)

	for _, cp := range cps {
		for seq := uint64(0); seq < cp.Size; seq++ {
			p, err := b.log.InclusionProof(ctx, seq, cp.Size)
			require.NoError(t, err)
			leaf, _ := hex.DecodeString(p.LeafHash)
			proof, err := audit.ParseHex(p.Proof)
			require.NoError(t, err)
			require.NoError(t, audit.VerifyInclusion(seq, cp.Size, leaf, proof, cp.Root), "seq %d size %d", seq, cp.Size)
			require.Equal(t, hex.EncodeToString(cp.Root), p.RootHash)
		}
	}

	c, err := b.log.ConsistencyProof(ctx, size1, size2)
	require.NoError(t, err)
	proof, err := audit.ParseHex(c.Proof)
	require.NoError(t, err)
	require.NotEmpty(t, proof)
	require.NoError(t, audit.VerifyConsistency(size1, size2, proof, cps[0].Root, cps[1].Root))

	// Every pair of sizes, not only the checkpoints'.
	for from := uint64(1); from <= size2; from += 5 {
		c, err := b.log.ConsistencyProof(ctx, from, size2)
		require.NoError(t, err)
		p, err := audit.ParseHex(c.Proof)
		require.NoError(t, err)
		r1, _ := hex.DecodeString(c.FromRoot)
		require.NoError(t, audit.VerifyConsistency(from, size2, p, r1, cps[1].Root), "from %d", from)
	}

	// A forged proof does not verify: one flipped bit, one hash dropped,
	// one hash added, or the proof of other sizes.
	flipped := cloneHashes(proof)
	flipped[0][0] ^= 1
	require.Error(t, audit.VerifyConsistency(size1, size2, flipped, cps[0].Root, cps[1].Root))
	require.Error(t, audit.VerifyConsistency(size1, size2, proof[1:], cps[0].Root, cps[1].Root))
	require.Error(t, audit.VerifyConsistency(size1, size2, append(cloneHashes(proof), proof[0]), cps[0].Root, cps[1].Root))
	other, err := b.log.ConsistencyProof(ctx, size1+1, size2)
	require.NoError(t, err)
	otherProof, _ := audit.ParseHex(other.Proof)
	require.Error(t, audit.VerifyConsistency(size1, size2, otherProof, cps[0].Root, cps[1].Root))
	// Nor does a true proof against a forged root.
	forged := bytes.Clone(cps[0].Root)
	forged[31] ^= 1
	require.Error(t, audit.VerifyConsistency(size1, size2, proof, forged, cps[1].Root))
}

func TestProofRequestsOutsideTheSealedLogAreRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	_, err := b.log.Checkpoint(ctx)
	require.ErrorContains(t, err, "no checkpoint")
	b.populate(t, 3)
	size := b.seal(t)
	for _, c := range []struct{ seq, size uint64 }{{size, size}, {0, size + 1}, {5, 3}} {
		_, err := b.log.InclusionProof(ctx, c.seq, c.size)
		require.Error(t, err, "seq %d size %d", c.seq, c.size)
	}
	for _, c := range []struct{ from, to uint64 }{{0, size}, {size, size + 1}, {3, 2}} {
		_, err := b.log.ConsistencyProof(ctx, c.from, c.to)
		require.Error(t, err, "from %d to %d", c.from, c.to)
	}
}

func checkpoints(t *testing.T, b *bundle) []audit.Checkpoint {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT note FROM checkpoints ORDER BY tree_size`)
	require.NoError(t, err)
	notes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	var out []audit.Checkpoint
	for _, n := range notes {
		cp, err := audit.OpenCheckpoint([]byte(n), b.verifier)
		require.NoError(t, err)
		out = append(out, cp)
	}
	return out
}

func cloneHashes(h [][]byte) [][]byte {
	out := make([][]byte, len(h))
	for i := range h {
		out[i] = bytes.Clone(h[i])
	}
	return out
}
