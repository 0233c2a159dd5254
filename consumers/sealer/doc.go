// Package sealer keeps keyledger's audit log: the Sealer tails the ledger in
// ledger order and gives each committed event a gapless seq, a leaf hash over
// its canonical encoding (audit.Leaf) and a place in an RFC 6962 Merkle tree,
// and signs checkpoints of the tree; Log reads the sealed log back (signed
// checkpoints, inclusion and consistency proofs, the seq and hash of events),
// Verify checks the whole ledger against its checkpoints, and Export writes
// an organization's sealed events with their proofs.
//
// Storage (migration 00006): seals holds one row per leaf; merkle_nodes holds
// the hash of every complete subtree of at least 16 leaves (level 4 and up),
// written in the transaction that seals the leaves under it; a node below
// level 4 is folded from its at most 8 leaves. So a proof reads about one
// stored node per level above 4 and at most 15 leaves, never the whole tree,
// and the node table holds about one row per 8 events. checkpoints holds the
// signed notes. Sealing never writes to the events table.
//
// Only one sealer seals at a time: leadership is eventstore.Lead's advisory
// lock. Should two overlap for a moment, the primary key on seq and the
// unique position refuse the second one's rows, and it reloads its state.
//
// A sealer signs only a tree that extends what was signed before: when it
// takes the lead it checks, with its own key, that the database's tree has
// the latest stored checkpoint's root at that size and extends it, and, with
// Options.CheckpointFile (serve keeps <data-dir>/audit-last-checkpoint), that
// the database reaches and extends the last checkpoint it wrote there. So
// someone who rewrites events, their leaf hashes and the stored nodes, and
// deletes the checkpoints, cannot have the forged tree signed; the sealer
// refuses (keyledger_sealer_refusing is 1) until an operator looks. Without
// the file, deleting every checkpoint leaves nothing to check against.
package sealer
