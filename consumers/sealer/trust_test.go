package sealer_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
)

// keepingSealer is a sealer of b's ledger that keeps its last checkpoint in
// file, with its metrics in reg.
func keepingSealer(t *testing.T, b *bundle, file string, reg prometheus.Registerer) *sealer.Sealer {
	t.Helper()
	s, err := sealer.New(b.store, sealer.Options{Signer: b.signer, Batch: 7, CheckpointFile: file, Registry: reg})
	require.NoError(t, err)
	return s
}

func TestSealerKeepsItsLastCheckpointInAFile(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	file := filepath.Join(t.TempDir(), "audit-last-checkpoint")
	b.populate(t, 5)
	size, err := keepingSealer(t, b, file, nil).CatchUp(ctx)
	require.NoError(t, err)

	fi, err := os.Stat(file)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	kept, err := os.ReadFile(file)
	require.NoError(t, err)
	stored, err := b.log.Checkpoint(ctx)
	require.NoError(t, err)
	require.Equal(t, string(stored), string(kept))
	cp, err := audit.OpenCheckpoint(kept, b.verifier)
	require.NoError(t, err)
	require.Equal(t, size, cp.Size)

	// A sealer of the next term (another process, the same file) checks it
	// and goes on; so does one without the file.
	b.populate(t, 5)
	size2, err := keepingSealer(t, b, file, nil).CatchUp(ctx)
	require.NoError(t, err)
	require.Greater(t, size2, size)
	kept, err = os.ReadFile(file)
	require.NoError(t, err)
	cp, err = audit.OpenCheckpoint(kept, b.verifier)
	require.NoError(t, err)
	require.Equal(t, size2, cp.Size)
	b.populate(t, 1)
	_, err = b.sealer.CatchUp(ctx)
	require.NoError(t, err)
	_, err = keepingSealer(t, b, file, nil).CatchUp(ctx)
	require.NoError(t, err, "the database's checkpoints may be ahead of the file")
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(file), "*"))
	require.NoError(t, err)
	require.Len(t, matches, 1, "no temporary file is left behind")
}

// refusesToSeal requires the sealer to refuse to seal, to say so in its
// metric, and to leave the checkpoints as they were.
func refusesToSeal(t *testing.T, b *bundle, file string) error {
	t.Helper()
	ctx := testContext(t)
	var before int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM checkpoints`).Scan(&before))
	reg := prometheus.NewRegistry()
	s := keepingSealer(t, b, file, reg)
	_, err := s.CatchUp(ctx)
	require.ErrorContains(t, err, "refusing to seal")
	mfs, gerr := reg.Gather()
	require.NoError(t, gerr)
	refusing := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "keyledger_sealer_refusing" {
			refusing = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	require.EqualValues(t, 1, refusing, "keyledger_sealer_refusing")
	var after int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM checkpoints`).Scan(&after))
	require.Equal(t, before, after, "nothing was signed")
	return err
}

// The reviewer's attack: an event rewritten with its leaf hash and every
// tree node, and the checkpoints deleted, so that nothing in the database
// contradicts the forged tree. The sealer must not sign it: the checkpoint
// it keeps outside the database contradicts it.
func TestSealerRefusesToSignAForgedTreeWhoseCheckpointsWereDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	file := filepath.Join(t.TempDir(), "audit-last-checkpoint")
	b.populate(t, 30) // 40 events
	_, err := keepingSealer(t, b, file, nil).CatchUp(ctx)
	require.NoError(t, err)

	b.tamperTx(t, func(ctx context.Context, tx pgx.Tx) {
		require.NoError(t, sealer.ForgeEvent(ctx, tx, 21, `actor = 'mallory'`))
		_, err := tx.Exec(ctx, `DELETE FROM checkpoints`)
		require.NoError(t, err)
	})
	b.populate(t, 2) // new events for the next checkpoint
	err = refusesToSeal(t, b, file)
	require.ErrorContains(t, err, "checkpoints end at size 0")

	// With the checkpoints deleted, the forged tree is all the database
	// holds: audit verify finds nothing to check it against. That is why
	// the sealer keeps its own copy.
	_, err = b.verify(t)
	require.NoError(t, err)
}

func TestSealerRefusesToSignAForgedTree(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 10)
	b.seal(t)
	b.populate(t, 20)
	b.seal(t)

	b.tamperTx(t, func(ctx context.Context, tx pgx.Tx) {
		require.NoError(t, sealer.ForgeEvent(ctx, tx, 21, `actor = 'mallory'`))
	})
	b.populate(t, 2)
	// Without the file: the latest checkpoint in the database is enough.
	err := refusesToSeal(t, b, "")
	require.ErrorContains(t, err, "does not extend the latest checkpoint")
}

// A tree whose nodes at the checkpoint's size are intact, but whose larger
// nodes, which the next checkpoint's root is made of, were forged, must not
// be signed either.
func TestSealerRefusesATreeInconsistentWithTheLatestCheckpoint(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.populate(t, 15) // 20 events: checkpoint of size 20
	require.EqualValues(t, 20, b.seal(t))
	// 12 more: the tree of 32 leaves has a stored node 5/0 covering both
	// the first checkpoint's leaves and the new ones.
	b.populate(t, 9)
	require.EqualValues(t, 32, b.seal(t))
	// Forge the level-5 node and delete the last checkpoint: the
	// checkpoint of size 20 still matches (its root is made of nodes 4/0
	// and leaves 16..19), but the tree's root at its size does not extend
	// it.
	b.tamper(t, `UPDATE merkle_nodes SET hash = sha256('forged') WHERE level = 5 AND idx = 0`,
		`DELETE FROM checkpoints WHERE tree_size > 20`)
	b.populate(t, 1)
	err := refusesToSeal(t, b, "")
	require.ErrorContains(t, err, "not consistent")
}
