package sealer

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// Export writes an organization's sealed events to w, as JSON lines: first an
// audit.ExportHeader with the latest signed checkpoint, then one
// audit.ExportLine per event sealed in that checkpoint's tree, in seq order,
// with its inclusion proof against it. With a non-zero since, the events
// from the first one, in seq order, that occurred at or after since: seq
// order is not occurred_at order (commands race, clocks differ), so a later
// event that occurred before since is kept, and the organization's chain has
// no hole for the offline verifier to find. It builds the checkpoint's whole tree in
// memory (64 bytes per sealed event) to answer the proofs. progress, if not
// nil, is told the number of lines written now and then.
// exportFrom finds the first seq an export holds: 0 without since ($3),
// else the least seq of the organization's events sealed in the tree ($2)
// that occurred at or after since (NULL, so no line, if none did).
const exportFrom = `WITH start AS (SELECT CASE WHEN $3::timestamptz IS NULL THEN 0 ELSE
		(SELECT min(s2.seq) FROM seals s2 JOIN events e2 ON e2.position = s2.position
		WHERE s2.org_id = $1 AND e2.org_id = $1 AND s2.seq < $2 AND e2.occurred_at >= $3) END AS seq) `

func Export(ctx context.Context, pool *pgxpool.Pool, orgID string, since time.Time, w io.Writer, progress func(events int64)) (audit.ExportHeader, error) {
	var h audit.ExportHeader
	if !domain.ValidOrgID(orgID) {
		return h, domain.Errorf(domain.EInvalid, "organization id must match ^[A-Za-z0-9_-]{1,64}$")
	}
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return h, eventstore.Unavailable(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	signed, size, err := latestCheckpoint(ctx, tx)
	if err != nil {
		return h, err
	}
	h = audit.ExportHeader{Checkpoint: signed, OrgID: orgID}
	var sinceArg *time.Time
	if !since.IsZero() {
		s := domain.FormatTime(since)
		h.Since, sinceArg = &s, &since
	}
	// The count and last seq go in the header, before the lines.
	var last *int64
	if err := tx.QueryRow(ctx, exportFrom+`SELECT count(*), max(s.seq) FROM seals s JOIN events e ON e.position = s.position
		WHERE e.org_id = $1 AND s.org_id = $1 AND s.seq < $2 AND s.seq >= (SELECT seq FROM start)`,
		orgID, size, sinceArg).Scan(&h.Events, &last); err != nil {
		return h, fmt.Errorf("export: %w", eventstore.Unavailable(err))
	}
	h.LastSeq = last

	tree, err := loadTree(ctx, tx, uint64(size))
	if err != nil {
		return h, err
	}
	bw := bufio.NewWriterSize(w, 256<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(h); err != nil {
		return h, err
	}
	rows, err := tx.Query(ctx, exportFrom+`SELECT s.seq, s.org_prev_seq, s.leaf_hash, `+eventstore.RawEventColumns+`
		FROM seals s JOIN events e ON e.position = s.position
		WHERE e.org_id = $1 AND s.org_id = $1 AND s.seq < $2 AND s.seq >= (SELECT seq FROM start)
		ORDER BY s.seq`, orgID, size, sinceArg)
	if err != nil {
		return h, fmt.Errorf("export: %w", eventstore.Unavailable(err))
	}
	defer rows.Close()
	var n int64
	for rows.Next() {
		var seq int64
		var prev *int64
		var hash []byte
		var e eventstore.RawEvent
		var xid string
		if err := rows.Scan(&seq, &prev, &hash, &e.Cursor.Position, &xid, &e.ID, &e.OrgID, &e.KeyID, &e.StreamVersion,
			&e.Type, &e.Actor, &e.OccurredAt, &e.Data); err != nil {
			return h, fmt.Errorf("export: %w", eventstore.Unavailable(err))
		}
		p, err := audit.InclusionProof(uint64(seq), uint64(size), tree.Nodes)
		if err != nil {
			return h, err
		}
		line := audit.ExportLine{Leaf: leafOf(e, seq, prev), Hash: hex.EncodeToString(hash), Proof: audit.Hex(p)}
		if err := enc.Encode(line); err != nil {
			return h, err
		}
		n++
		if progress != nil && n%10000 == 0 {
			progress(n)
		}
	}
	if err := rows.Err(); err != nil {
		return h, fmt.Errorf("export: %w", eventstore.Unavailable(err))
	}
	if progress != nil {
		progress(n)
	}
	return h, bw.Flush()
}

// loadTree reads the first size leaf hashes and builds their tree.
func loadTree(ctx context.Context, q eventstore.Querier, size uint64) (*audit.Tree, error) {
	rows, err := q.Query(ctx, `SELECT leaf_hash FROM seals WHERE seq < $1 ORDER BY seq`, int64(size))
	if err != nil {
		return nil, fmt.Errorf("export: leaves: %w", eventstore.Unavailable(err))
	}
	leaves := make([][]byte, 0, size)
	var h []byte
	if _, err := pgx.ForEachRow(rows, []any{&h}, func() error {
		leaves = append(leaves, h)
		h = nil
		return nil
	}); err != nil {
		return nil, fmt.Errorf("export: leaves: %w", eventstore.Unavailable(err))
	}
	if uint64(len(leaves)) != size {
		return nil, fmt.Errorf("export: the checkpoint covers %d events but %d are sealed: the audit tables are damaged (run keyledger audit verify)", size, len(leaves))
	}
	return audit.NewTree(leaves), nil
}
