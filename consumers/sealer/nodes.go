package sealer

import (
	"context"
	"fmt"

	"github.com/transparency-dev/merkle/compact"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/eventstore"
)

// storedLevel is the lowest level whose nodes are kept in merkle_nodes.
const storedLevel = 4

// nodeFetcher returns the fetcher of node hashes from the database through
// q: stored nodes from merkle_nodes, lower ones folded from their leaves.
func nodeFetcher(ctx context.Context, q eventstore.Querier) audit.NodeFetcher {
	return func(ids []compact.NodeID) ([][]byte, error) {
		var levels []int16
		var idxs []int64
		var seqs []int64
		for _, id := range ids {
			if id.Level >= storedLevel {
				levels = append(levels, int16(id.Level))
				idxs = append(idxs, int64(id.Index))
				continue
			}
			begin, end := id.Coverage()
			for s := begin; s < end; s++ {
				seqs = append(seqs, int64(s))
			}
		}
		stored := map[compact.NodeID][]byte{}
		if len(levels) > 0 {
			rows, err := q.Query(ctx, `SELECT n.level, n.idx, n.hash FROM merkle_nodes n
				JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx) ON n.level = w.level AND n.idx = w.idx`, levels, idxs)
			if err != nil {
				return nil, eventstore.Unavailable(err)
			}
			for rows.Next() {
				var level int16
				var idx int64
				var h []byte
				if err := rows.Scan(&level, &idx, &h); err != nil {
					rows.Close()
					return nil, err
				}
				stored[compact.NewNodeID(uint(level), uint64(idx))] = h
			}
			if err := rows.Err(); err != nil {
				return nil, eventstore.Unavailable(err)
			}
		}
		leaves := map[uint64][]byte{}
		if len(seqs) > 0 {
			rows, err := q.Query(ctx, `SELECT seq, leaf_hash FROM seals WHERE seq = ANY($1)`, seqs)
			if err != nil {
				return nil, eventstore.Unavailable(err)
			}
			for rows.Next() {
				var seq int64
				var h []byte
				if err := rows.Scan(&seq, &h); err != nil {
					rows.Close()
					return nil, err
				}
				leaves[uint64(seq)] = h
			}
			if err := rows.Err(); err != nil {
				return nil, eventstore.Unavailable(err)
			}
		}
		out := make([][]byte, len(ids))
		for i, id := range ids {
			if id.Level >= storedLevel {
				h, ok := stored[id]
				if !ok {
					return nil, fmt.Errorf("merkle node %d/%d is missing: the audit tables are damaged (run keyledger audit verify)", id.Level, id.Index)
				}
				out[i] = h
				continue
			}
			begin, end := id.Coverage()
			r := audit.NewRangeFrom(begin)
			for s := begin; s < end; s++ {
				h, ok := leaves[s]
				if !ok {
					return nil, fmt.Errorf("seal of seq %d is missing: the audit tables are damaged (run keyledger audit verify)", s)
				}
				if err := r.Append(h, nil); err != nil {
					return nil, err
				}
			}
			// A complete subtree is a compact range of one node.
			out[i] = r.Hashes()[0]
		}
		return out, nil
	}
}

// leafID names the node of one leaf.
func leafID(seq uint64) []compact.NodeID { return []compact.NodeID{compact.NewNodeID(0, seq)} }
