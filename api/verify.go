package api

import (
	"net/http"
	"time"

	"github.com/keyledger/keyledger/domain"
)

type verifyResponse struct {
	Valid     bool    `json:"valid"`
	KeyID     string  `json:"key_id"`
	OrgID     string  `json:"org_id"`
	Name      string  `json:"name"`
	Status    string  `json:"status"`
	ExpiresAt *string `json:"expires_at"`
}

// verify checks x-api-key against x-organization-id. It answers from the
// request headers alone, 200 or 401, so it can serve as an nginx
// auth_request, Traefik ForwardAuth or Envoy ext_authz endpoint; a request
// body, if any, is ignored.
func (s *Server) verify(w http.ResponseWriter, r *http.Request) error {
	start := time.Now()
	now := s.Now()
	v, err := domain.Verify(r.Context(), s.Lookup, s.KeyPrefix, r.Header.Get("X-Api-Key"), r.Header.Get("X-Organization-Id"), now)
	s.metrics.verifyDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.verifies.WithLabelValues(domain.ErrorCode(err)).Inc()
		return err
	}
	if !v.Valid() {
		s.metrics.verifies.WithLabelValues(string(v.Reason)).Inc()
		valid := false
		w.Header().Set("WWW-Authenticate", `APIKey realm="keyledger"`)
		writeProblem(w, r, problem{
			Type:   problemTypeBase + "key_" + string(v.Reason),
			Title:  http.StatusText(http.StatusUnauthorized),
			Status: http.StatusUnauthorized,
			Detail: reasonDetail[v.Reason],
			Reason: string(v.Reason),
			Valid:  &valid,
		})
		return nil
	}
	s.metrics.verifies.WithLabelValues("valid").Inc()
	k := v.Key
	w.Header().Set("X-Keyledger-Key-Id", k.ID)
	writeJSON(w, http.StatusOK, verifyResponse{
		Valid: true, KeyID: k.ID, OrgID: k.OrgID, Name: k.Name,
		Status: string(k.Status(now)), ExpiresAt: formatOptional(k.ExpiresAt),
	})
	return nil
}

var reasonDetail = map[domain.Reason]string{
	domain.ReasonMissing:   "both x-api-key and x-organization-id headers are required",
	domain.ReasonMalformed: "the key or the organization id is not well-formed",
	domain.ReasonInvalid:   "the key is not valid for this organization",
	domain.ReasonExpired:   "the key has expired",
	domain.ReasonRevoked:   "the key has been revoked",
}

func errorCodeLabel(err error) string { return domain.ErrorCode(err) }
