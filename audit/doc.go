// Package audit holds what a security team needs to check keyledger's audit
// log without a database: the canonical encoding of a sealed event (Leaf),
// its leaf hash, signed checkpoints, Merkle inclusion and consistency proofs
// (RFC 6962, through github.com/transparency-dev/merkle), and the verification
// of an organization's export.
//
// It imports no database driver, so that `keyledger audit verify --file` and
// any other verifier can run it offline. The sealer (consumers/sealer) writes
// what this package checks.
//
// # Leaf encoding (version 1)
//
// The leaf of a sealed event is the RFC 8785 (JCS) canonical JSON of one
// object with exactly these members:
//
//	actor          string   who issued the command
//	data           object   the event's data, canonicalized as stored
//	id             string   the event id (UUID, lowercase)
//	key_id         string
//	occurred_at    string   RFC 3339 in UTC, fractional seconds without trailing zeros
//	org_id         string
//	org_prev_seq   number   seq of the organization's previous sealed event, or null
//	position       number   the event's position in the event table
//	seq            number   the leaf index
//	stream_version number
//	type           string
//	v              number   1, the version of this encoding
//
// JCS sorts members by their UTF-16 code units, writes no whitespace, escapes
// only what JSON requires, and writes numbers as ECMAScript does. The leaf
// hash is SHA-256(0x00 || leaf) and interior nodes are SHA-256(0x01 || left ||
// right), as RFC 6962 defines. Hashes are written in hex in JSON, except in
// checkpoints, whose format (C2SP tlog-checkpoint) writes the root in base64.
//
// These names and this layout never change: a new encoding gets a new v.
package audit
