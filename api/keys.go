package api

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/keyledger/keyledger/domain"
)

// keyJSON is a key as the API shows it. Key, the plaintext, is set only in
// the response that created it.
type keyJSON struct {
	ID        string  `json:"id"`
	OrgID     string  `json:"org_id"`
	Name      string  `json:"name"`
	Key       string  `json:"key,omitempty"`
	Masked    string  `json:"masked"`
	Status    string  `json:"status"`
	CreatedAt string  `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
	RevokedAt *string `json:"revoked_at"`
}

func toKeyJSON(k *domain.Key, now time.Time) keyJSON {
	return keyJSON{
		ID:        k.ID,
		OrgID:     k.OrgID,
		Name:      k.Name,
		Masked:    k.Masked,
		Status:    string(k.Status(now)),
		CreatedAt: domain.FormatTime(k.CreatedAt),
		ExpiresAt: formatOptional(k.ExpiresAt),
		RevokedAt: formatOptional(k.RevokedAt),
	}
}

func formatOptional(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := domain.FormatTime(*t)
	return &s
}

type generateRequest struct {
	Name      *string `json:"name"`
	ExpiresAt *string `json:"expires_at"`
}

func (s *Server) generateKey(w http.ResponseWriter, r *http.Request) error {
	var req generateRequest
	if err := decodeBody(w, r, &req, false); err != nil {
		return err
	}
	if req.Name == nil {
		return domain.Errorf(domain.EInvalid, "name is required")
	}
	cmd := domain.GenerateKey{OrgID: chi.URLParam(r, "org_id"), Name: *req.Name, Actor: r.Header.Get("X-Actor")}
	if req.ExpiresAt != nil {
		t, err := time.Parse(time.RFC3339, *req.ExpiresAt)
		if err != nil {
			return domain.Errorf(domain.EInvalid, "expires_at must be an RFC 3339 time, such as 2030-01-31T00:00:00Z, or null")
		}
		cmd.ExpiresAt = &t
	}
	idem, hasIdem := r.Header["Idempotency-Key"]
	idemKey := ""
	if hasIdem {
		idemKey = idem[0]
		if idemKey == "" {
			return domain.Errorf(domain.EInvalid, "Idempotency-Key must not be empty")
		}
	}
	start := time.Now()
	g, err := s.Commands.GenerateKey(r.Context(), cmd, idemKey)
	s.metrics.observeCommand("generate_key", start, err)
	if err != nil {
		return err
	}
	body := toKeyJSON(g.Key, s.Now())
	if g.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, http.StatusOK, body)
		return nil
	}
	body.Key = g.Secret
	writeJSON(w, http.StatusCreated, body)
	return nil
}

type revokeRequest struct {
	Reason string `json:"reason"`
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request) error {
	keyID, err := keyIDParam(r)
	if err != nil {
		return err
	}
	var req revokeRequest
	if err := decodeBody(w, r, &req, true); err != nil {
		return err
	}
	start := time.Now()
	k, err := s.Commands.RevokeKey(r.Context(), domain.RevokeKey{
		OrgID: chi.URLParam(r, "org_id"), KeyID: keyID, Reason: req.Reason, Actor: r.Header.Get("X-Actor"),
	})
	s.metrics.observeCommand("revoke_key", start, err)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toKeyJSON(k, s.Now()))
	return nil
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request) error {
	keyID, err := keyIDParam(r)
	if err != nil {
		return err
	}
	asOf, err := asOfParam(r)
	if err != nil {
		return err
	}
	if asOf != nil {
		return s.keyAsOf(w, r, chi.URLParam(r, "org_id"), keyID, *asOf)
	}
	k, err := s.Keys.GetKey(r.Context(), chi.URLParam(r, "org_id"), keyID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toKeyJSON(k, s.Now()))
	return nil
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	query := domain.KeyQuery{
		OrgID:  chi.URLParam(r, "org_id"),
		Search: q.Get("q"),
		Cursor: q.Get("cursor"),
		Now:    s.Now(),
	}
	if len([]rune(query.Search)) > 100 {
		return domain.Errorf(domain.EInvalid, "q must be at most 100 characters")
	}
	if st := q.Get("status"); st != "" {
		status, err := domain.ParseStatus(st)
		if err != nil {
			return err
		}
		query.Status = status
	}
	limit, err := limitParam(r)
	if err != nil {
		return err
	}
	query.Limit = limit
	page, err := s.Keys.ListKeys(r.Context(), query)
	if err != nil {
		return err
	}
	out := struct {
		Keys       []keyJSON `json:"keys"`
		NextCursor *string   `json:"next_cursor"`
	}{Keys: make([]keyJSON, 0, len(page.Keys))}
	for _, k := range page.Keys {
		out.Keys = append(out.Keys, toKeyJSON(k, query.Now))
	}
	if page.NextCursor != "" {
		out.NextCursor = &page.NextCursor
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) keyEvents(w http.ResponseWriter, r *http.Request) error {
	keyID, err := keyIDParam(r)
	if err != nil {
		return err
	}
	events, err := s.Events.Load(r.Context(), chi.URLParam(r, "org_id"), keyID)
	if err != nil {
		return err
	}
	if len(events) == 0 {
		return domain.Errorf(domain.ENotFound, "key not found")
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events})
	return nil
}

func (s *Server) orgEvents(w http.ResponseWriter, r *http.Request) error {
	limit, err := limitParam(r)
	if err != nil {
		return err
	}
	events, next, err := s.Events.OrgLog(r.Context(), chi.URLParam(r, "org_id"), r.URL.Query().Get("after"), limit)
	if err != nil {
		return err
	}
	if events == nil {
		events = []domain.Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events, "next": next})
	return nil
}

// keyIDParam reads the key id from the path; a malformed one names no key.
func keyIDParam(r *http.Request) (string, error) {
	id := chi.URLParam(r, "key_id")
	if !domain.ValidKeyID(id) {
		return "", domain.Errorf(domain.ENotFound, "key not found")
	}
	return id, nil
}

func limitParam(r *http.Request) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return domain.DefaultPageSize, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > domain.MaxPageSize {
		return 0, domain.Errorf(domain.EInvalid, "limit must be a whole number from 1 to %d", domain.MaxPageSize)
	}
	return n, nil
}
