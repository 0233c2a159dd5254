package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/domain"
)

// AuditLog reads the sealed audit log: signed checkpoints and proofs.
type AuditLog interface {
	// Checkpoint returns the latest signed checkpoint, as a signed note.
	Checkpoint(ctx context.Context) ([]byte, error)
	// InclusionProof proves seq is in the tree of size leaves (0: the
	// latest checkpoint's size).
	InclusionProof(ctx context.Context, seq, size uint64) (audit.Inclusion, error)
	// ConsistencyProof proves the tree of from leaves is a prefix of the
	// tree of to leaves (0: the latest checkpoint's size).
	ConsistencyProof(ctx context.Context, from, to uint64) (audit.Consistency, error)
}

// checkpoint serves the latest signed checkpoint as the note's text. It is
// public, like a transparency log's: it holds a size and a hash, nothing of
// any organization, and auditors fetch it to compare with what they hold.
func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request) error {
	signed, err := s.Audit.Checkpoint(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(signed)
	return nil
}

func (s *Server) inclusionProof(w http.ResponseWriter, r *http.Request) error {
	seq, err := uintParam(r, "seq", true)
	if err != nil {
		return err
	}
	size, err := uintParam(r, "size", false)
	if err != nil {
		return err
	}
	p, err := s.Audit.InclusionProof(r.Context(), seq, size)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) consistencyProof(w http.ResponseWriter, r *http.Request) error {
	from, err := uintParam(r, "from", true)
	if err != nil {
		return err
	}
	to, err := uintParam(r, "to", false)
	if err != nil {
		return err
	}
	p, err := s.Audit.ConsistencyProof(r.Context(), from, to)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

// maxTreeSize bounds the numbers of proof requests: a tree size is a count
// of events, well below 2^53 (a JSON number's exact range).
const maxTreeSize = 1 << 53

// uintParam reads a query parameter that is a whole number; 0 when absent
// and not required.
func uintParam(r *http.Request, name string, required bool) (uint64, error) {
	v := strings.TrimSpace(r.URL.Query().Get(name))
	if v == "" {
		if required {
			return 0, domain.Errorf(domain.EInvalid, "%s is required", name)
		}
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n >= maxTreeSize {
		return 0, domain.Errorf(domain.EInvalid, "%s must be a whole number from 0 to 2^53-1, got %q", name, v)
	}
	return n, nil
}

// asOfParam reads the as_of parameter of a key read: the time at which to
// show the key, or nil for now.
func asOfParam(r *http.Request) (*time.Time, error) {
	v, ok := r.URL.Query()["as_of"]
	if !ok {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(v[0]))
	if err != nil {
		return nil, domain.Errorf(domain.EInvalid, "as_of must be an RFC 3339 time, such as 2026-03-03T09:14:00Z")
	}
	return &t, nil
}

// keyAsOf answers a key read with as_of: the key as it stood then, folded
// from its events, with the status it had then.
func (s *Server) keyAsOf(w http.ResponseWriter, r *http.Request, orgID, keyID string, at time.Time) error {
	events, err := s.Events.Load(r.Context(), orgID, keyID)
	if err != nil {
		return err
	}
	if len(events) == 0 {
		return domain.Errorf(domain.ENotFound, "key not found")
	}
	k := domain.KeyAt(events, at)
	if k == nil {
		return domain.Errorf(domain.ENotFound, "the key did not exist yet at %s", domain.FormatTime(at))
	}
	writeJSON(w, http.StatusOK, toKeyJSON(k, at))
	return nil
}
