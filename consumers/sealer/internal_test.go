package sealer

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/transparency-dev/merkle/compact"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/eventstore"
)

// SetVerifyChunk makes Verify read n seals per query until the test ends.
func SetVerifyChunk(t testing.TB, n int) {
	old := verifyChunk.Swap(int64(n))
	t.Cleanup(func() { verifyChunk.Store(old) })
}

// ForgeEvent rewrites, in tx (with the append-only triggers disabled), the
// event sealed at seq with set (an SQL SET list), then its leaf hash and
// every stored tree node, consistently: all an attacker with the
// superuser's keys can do, short of signing.
func ForgeEvent(ctx context.Context, tx pgx.Tx, seq int64, set string) error {
	var pos int64
	var orgPrev *int64
	if err := tx.QueryRow(ctx, `SELECT position, org_prev_seq FROM seals WHERE seq = $1`, seq).Scan(&pos, &orgPrev); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE events SET `+set+` WHERE position = $1`, pos); err != nil {
		return err
	}
	rows, err := tx.Query(ctx, `SELECT `+eventstore.RawEventColumns+` FROM events e WHERE e.position = $1`, pos)
	if err != nil {
		return err
	}
	events, err := eventstore.ScanRawEvents(rows)
	if err != nil {
		return err
	}
	if len(events) != 1 {
		return fmt.Errorf("event at position %d: found %d", pos, len(events))
	}
	hash, err := leafOf(events[0], seq, orgPrev).Hash()
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE seals SET leaf_hash = $1 WHERE seq = $2`, hash, seq); err != nil {
		return err
	}
	leaves, err := pgx.CollectRows(mustQuery(ctx, tx, `SELECT leaf_hash FROM seals ORDER BY seq`), pgx.RowTo[[]byte])
	if err != nil {
		return err
	}
	tree := audit.NewTree(leaves)
	if _, err := tx.Exec(ctx, `DELETE FROM merkle_nodes`); err != nil {
		return err
	}
	size := uint64(len(leaves))
	for level := uint(storedLevel); size>>level > 0; level++ {
		for idx := uint64(0); idx < size>>level; idx++ {
			h, err := tree.Nodes([]compact.NodeID{compact.NewNodeID(level, idx)})
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)`, int16(level), int64(idx), h[0]); err != nil {
				return err
			}
		}
	}
	return nil
}

func mustQuery(ctx context.Context, tx pgx.Tx, sql string) pgx.Rows {
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		panic(err)
	}
	return rows
}
