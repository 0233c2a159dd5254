package audit

import (
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
)

// NodeFetcher returns the hashes of complete subtrees of the tree, in the
// order of ids. Each id is a node whose subtree has all its leaves.
type NodeFetcher func(ids []compact.NodeID) ([][]byte, error)

var rangeFactory = compact.RangeFactory{Hash: Hasher.HashChildren}

// NewRange returns an empty compact range at the start of the tree: the
// running state from which roots are computed leaf by leaf.
func NewRange() *compact.Range { return rangeFactory.NewEmptyRange(0) }

// NewRangeFrom returns an empty compact range that starts at leaf begin: the
// leaves appended to it from there fold into the subtrees they complete.
func NewRangeFrom(begin uint64) *compact.Range { return rangeFactory.NewEmptyRange(begin) }

// RangeAt returns the compact range of the first size leaves, from the
// hashes of the complete subtrees it is made of.
func RangeAt(size uint64, fetch NodeFetcher) (*compact.Range, error) {
	ids := compact.RangeNodes(0, size, nil)
	hashes, err := fetch(ids)
	if err != nil {
		return nil, err
	}
	return rangeFactory.NewRange(0, size, hashes)
}

// RootAt returns the root hash of the tree of the first size leaves.
func RootAt(size uint64, fetch NodeFetcher) ([]byte, error) {
	if size == 0 {
		return Hasher.EmptyRoot(), nil
	}
	r, err := RangeAt(size, fetch)
	if err != nil {
		return nil, err
	}
	return r.GetRootHash(nil)
}

// InclusionProof returns the proof that leaf index is in the tree of size
// leaves.
func InclusionProof(index, size uint64, fetch NodeFetcher) ([][]byte, error) {
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return rehash(nodes, fetch)
}

// ConsistencyProof returns the proof that the tree of size1 leaves is a
// prefix of the tree of size2 leaves.
func ConsistencyProof(size1, size2 uint64, fetch NodeFetcher) ([][]byte, error) {
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return rehash(nodes, fetch)
}

func rehash(nodes proof.Nodes, fetch NodeFetcher) ([][]byte, error) {
	if len(nodes.IDs) == 0 {
		return [][]byte{}, nil
	}
	hashes, err := fetch(nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(hashes, Hasher.HashChildren)
}

// VerifyInclusion checks that leafHash is leaf index of the tree of size
// leaves whose root is root.
func VerifyInclusion(index, size uint64, leafHash []byte, p [][]byte, root []byte) error {
	if err := proof.VerifyInclusion(Hasher, index, size, leafHash, p, root); err != nil {
		return fmt.Errorf("inclusion of seq %d in the tree of size %d: %w", index, size, err)
	}
	return nil
}

// VerifyConsistency checks that the tree of size1 leaves with root1 is a
// prefix of the tree of size2 leaves with root2.
func VerifyConsistency(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	if err := proof.VerifyConsistency(Hasher, size1, size2, p, root1, root2); err != nil {
		return fmt.Errorf("consistency of tree size %d with %d: %w", size1, size2, err)
	}
	return nil
}

// Tree is a whole tree in memory: every leaf hash and every complete
// subtree's hash, 64 bytes per leaf. An export builds one to answer many
// inclusion proofs against one checkpoint.
type Tree struct {
	levels [][][]byte
}

// NewTree builds the tree of the given leaf hashes.
func NewTree(leaves [][]byte) *Tree {
	t := &Tree{levels: [][][]byte{leaves}}
	for level := leaves; len(level) > 1; {
		next := make([][]byte, len(level)/2)
		for i := range next {
			next[i] = Hasher.HashChildren(level[2*i], level[2*i+1])
		}
		t.levels = append(t.levels, next)
		level = next
	}
	return t
}

// Size is the number of leaves.
func (t *Tree) Size() uint64 { return uint64(len(t.levels[0])) }

// Nodes is the tree's NodeFetcher.
func (t *Tree) Nodes(ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		if int(id.Level) >= len(t.levels) || id.Index >= uint64(len(t.levels[id.Level])) {
			return nil, fmt.Errorf("node %d/%d is not in a tree of %d leaves", id.Level, id.Index, t.Size())
		}
		out[i] = t.levels[id.Level][id.Index]
	}
	return out, nil
}

// Inclusion is an inclusion proof as the audit API serves it: the leaf hash
// of seq, the proof's hashes from the leaf up, and the root they lead to.
type Inclusion struct {
	Seq      uint64   `json:"seq"`
	TreeSize uint64   `json:"tree_size"`
	LeafHash string   `json:"leaf_hash"`
	RootHash string   `json:"root_hash"`
	Proof    []string `json:"proof"`
}

// Consistency is a consistency proof as the audit API serves it, with the
// roots of both trees.
type Consistency struct {
	From     uint64   `json:"from"`
	To       uint64   `json:"to"`
	FromRoot string   `json:"from_root"`
	ToRoot   string   `json:"to_root"`
	Proof    []string `json:"proof"`
}
