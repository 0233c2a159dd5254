package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/transparency-dev/merkle/rfc6962"
)

// LeafVersion is the version of the leaf encoding, written in every leaf.
const LeafVersion = 1

// Leaf is a sealed event as it is hashed into the Merkle tree: the event's
// envelope, its place in the log (Seq) and the seq of its organization's
// previous sealed event (OrgPrevSeq, nil for the organization's first). Its
// JSON form is the one event lines of an export carry; Encode gives the
// canonical bytes that are hashed (see the package documentation).
type Leaf struct {
	Seq           int64           `json:"seq"`
	OrgPrevSeq    *int64          `json:"org_prev_seq"`
	Position      int64           `json:"position"`
	ID            string          `json:"id"`
	Type          string          `json:"type"`
	OrgID         string          `json:"org_id"`
	KeyID         string          `json:"key_id"`
	StreamVersion int64           `json:"stream_version"`
	OccurredAt    string          `json:"occurred_at"`
	Actor         string          `json:"actor"`
	Data          json.RawMessage `json:"data"`
}

// Encode returns the leaf's canonical encoding, version 1.
func (l Leaf) Encode() ([]byte, error) {
	return l.appendEncoding(make([]byte, 0, len(l.Data)+256))
}

func (l Leaf) appendEncoding(b []byte) ([]byte, error) {
	if !utf8.Valid(l.Data) {
		return nil, fmt.Errorf("seq %d: data: invalid UTF-8", l.Seq)
	}
	// The members in JCS order: sorted by name.
	b = append(b, `{"actor":`...)
	b = appendString(b, l.Actor)
	b = append(b, `,"data":`...)
	b, err := appendCanonical(b, l.Data)
	if err != nil {
		return nil, fmt.Errorf("seq %d: data: %w", l.Seq, err)
	}
	b = append(b, `,"id":`...)
	b = appendString(b, l.ID)
	b = append(b, `,"key_id":`...)
	b = appendString(b, l.KeyID)
	b = append(b, `,"occurred_at":`...)
	b = appendString(b, l.OccurredAt)
	b = append(b, `,"org_id":`...)
	b = appendString(b, l.OrgID)
	b = append(b, `,"org_prev_seq":`...)
	if l.OrgPrevSeq == nil {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendInt(b, *l.OrgPrevSeq, 10)
	}
	b = append(b, `,"position":`...)
	b = strconv.AppendInt(b, l.Position, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, l.Seq, 10)
	b = append(b, `,"stream_version":`...)
	b = strconv.AppendInt(b, l.StreamVersion, 10)
	b = append(b, `,"type":`...)
	b = appendString(b, l.Type)
	b = append(b, `,"v":`...)
	b = strconv.AppendInt(b, LeafVersion, 10)
	return append(b, '}'), nil
}

// Hash returns the leaf's RFC 6962 leaf hash, SHA-256(0x00 || Encode()).
func (l Leaf) Hash() ([]byte, error) {
	var spare [1024]byte
	b, err := l.appendEncoding(append(spare[:0], 0x00))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// Hasher is the RFC 6962 SHA-256 hasher of keyledger's Merkle tree.
var Hasher = rfc6962.DefaultHasher

// HashSize is the size of every hash in the tree.
const HashSize = 32

// Hex writes hashes as JSON carries them.
func Hex(hashes [][]byte) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = hex.EncodeToString(h)
	}
	return out
}

// ParseHex reads hashes written by Hex.
func ParseHex(hashes []string) ([][]byte, error) {
	out := make([][]byte, len(hashes))
	for i, s := range hashes {
		h, err := hex.DecodeString(s)
		if err != nil || len(h) != HashSize {
			return nil, fmt.Errorf("hash %d is not %d bytes of hex", i, HashSize)
		}
		out[i] = h
	}
	return out, nil
}
