package audit

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ExportHeader is the first line of an organization's export: the signed
// checkpoint every line's inclusion proof is against, and what the export
// holds, so that a verifier can tell a truncated file.
type ExportHeader struct {
	// Checkpoint is the signed note, as GET /v1/audit/checkpoint serves it.
	Checkpoint string `json:"checkpoint"`
	OrgID      string `json:"org_id"`
	// Since is the RFC 3339 time given to --since, or null for the whole
	// history: then the first line must be the organization's first event.
	Since *string `json:"since"`
	// Events is the number of event lines; LastSeq the seq of the last one
	// (null when there are none).
	Events  int64  `json:"events"`
	LastSeq *int64 `json:"last_seq"`
}

// ExportLine is one sealed event of an export: the leaf, its hash (hex) and
// its inclusion proof (hex hashes, leaf to root) against the header's
// checkpoint.
type ExportLine struct {
	Leaf
	Hash  string   `json:"hash"`
	Proof []string `json:"proof"`
}

// ExportSummary is what a verified export proved.
type ExportSummary struct {
	OrgID    string
	TreeSize uint64
	Events   int64
	FirstSeq int64
	LastSeq  int64
}

// maxExportLine bounds one line of an export: an event is a few hundred
// bytes, its proof under 64 hashes.
const maxExportLine = 1 << 20

// VerifyExport checks an export offline, with the log's verifier key: the
// checkpoint's signature; that each line's hash is the hash of its content
// and that its inclusion proof leads to the checkpoint's root; that every line
// is of the header's organization; and that no event of the organization is
// missing between the first line and the last (each line's org_prev_seq is
// the previous line's seq; without --since, the first line has none). The
// header's count and last seq catch a file cut short by accident; they are
// not signed, so they cannot prove that nobody removed the last lines and
// edited the header too: completeness up to the checkpoint is checked
// online, by keyledger audit verify. An error names the line
// and the seq that failed. progress, if not nil, is called with the number
// of lines checked.
func VerifyExport(r io.Reader, verifierKey string, progress func(lines int64)) (ExportSummary, error) {
	var sum ExportSummary
	verifier, err := NewVerifier(verifierKey)
	if err != nil {
		return sum, fmt.Errorf("--public-key: %w", err)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxExportLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return sum, fmt.Errorf("line 1: %w", err)
		}
		return sum, errors.New("line 1: the export is empty: want a header line with the checkpoint")
	}
	var h ExportHeader
	if err := strictUnmarshal(sc.Bytes(), &h); err != nil {
		return sum, fmt.Errorf("line 1: not an export header: %w", err)
	}
	cp, err := OpenCheckpoint([]byte(h.Checkpoint), verifier)
	if err != nil {
		return sum, fmt.Errorf("line 1: %w", err)
	}
	sum.OrgID, sum.TreeSize = h.OrgID, cp.Size
	var prev *ExportLine
	lineNo := 1
	for sc.Scan() {
		lineNo++
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			return sum, fmt.Errorf("line %d: empty line", lineNo)
		}
		var l ExportLine
		if err := strictUnmarshal(sc.Bytes(), &l); err != nil {
			return sum, fmt.Errorf("line %d: not an export line: %w", lineNo, err)
		}
		if err := checkLine(l, prev, h, cp); err != nil {
			return sum, fmt.Errorf("line %d, seq %d: %w", lineNo, l.Seq, err)
		}
		if prev == nil {
			sum.FirstSeq = l.Seq
		}
		sum.Events++
		sum.LastSeq = l.Seq
		prev = &l
		if progress != nil && sum.Events%10000 == 0 {
			progress(sum.Events)
		}
	}
	if err := sc.Err(); err != nil {
		return sum, fmt.Errorf("line %d: %w", lineNo+1, err)
	}
	if sum.Events != h.Events {
		return sum, fmt.Errorf("the header announces %d events, the file holds %d: lines were removed or added", h.Events, sum.Events)
	}
	if h.LastSeq != nil && (prev == nil || prev.Seq != *h.LastSeq) {
		return sum, fmt.Errorf("the header's last seq is %d, the file ends at seq %d: lines were removed at the end", *h.LastSeq, sum.LastSeq)
	}
	if progress != nil {
		progress(sum.Events)
	}
	return sum, nil
}

// checkLine checks one event line against the one before it and the
// checkpoint.
func checkLine(l ExportLine, prev *ExportLine, h ExportHeader, cp Checkpoint) error {
	if l.OrgID != h.OrgID {
		return fmt.Errorf("event of organization %q in an export of %q", l.OrgID, h.OrgID)
	}
	if l.Seq < 0 || uint64(l.Seq) >= cp.Size {
		return fmt.Errorf("seq is outside the checkpoint's tree of size %d", cp.Size)
	}
	switch {
	case prev != nil && (l.OrgPrevSeq == nil || *l.OrgPrevSeq != prev.Seq):
		return fmt.Errorf("the organization's previous event is %s, but the line before is seq %d: an event is missing or out of order",
			seqOrNone(l.OrgPrevSeq), prev.Seq)
	case prev == nil && h.Since == nil && l.OrgPrevSeq != nil:
		return fmt.Errorf("the organization's previous event is seq %d, but the export claims its whole history: the first events are missing",
			*l.OrgPrevSeq)
	}
	hash, err := l.Leaf.Hash()
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(hash); got != l.Hash {
		return fmt.Errorf("the event's content hashes to %s, not to the sealed hash %s: the line was altered", got, l.Hash)
	}
	p, err := ParseHex(l.Proof)
	if err != nil {
		return fmt.Errorf("proof: %w", err)
	}
	return VerifyInclusion(uint64(l.Seq), cp.Size, hash, p, cp.Root)
}

func seqOrNone(s *int64) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("seq %d", *s)
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}
