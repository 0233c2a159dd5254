package api

import (
	"net/http"
	"strings"
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
	lookup := s.Lookup
	if s.Authority != nil && noCache(r) {
		lookup = s.Authority
	}
	v, err := domain.Verify(r.Context(), lookup, s.KeyPrefix, r.Header.Get("X-Api-Key"), r.Header.Get("X-Organization-Id"), now)
	s.metrics.verifyDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.verifies.WithLabelValues(domain.ErrorCode(err)).Inc()
		return err
	}
	if !v.Valid() {
		s.metrics.verifies.WithLabelValues(string(v.Reason)).Inc()
		WriteVerifyFailure(w, r, v.Reason)
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

// WriteVerifyFailure renders a failed verification: 401 with a problem+json
// body whose reason says why. /v1/verify and the gateway proxy both answer
// with it, so a client sees one shape whichever checked its key. A reason
// outside the contract is rendered as invalid.
func WriteVerifyFailure(w http.ResponseWriter, r *http.Request, reason domain.Reason) {
	if _, ok := reasonDetail[reason]; !ok {
		reason = domain.ReasonInvalid
	}
	valid := false
	w.Header().Set("WWW-Authenticate", `APIKey realm="keyledger"`)
	writeProblem(w, r, problem{
		Type:   problemTypeBase + "key_" + string(reason),
		Title:  http.StatusText(http.StatusUnauthorized),
		Status: http.StatusUnauthorized,
		Detail: reasonDetail[reason],
		Reason: string(reason),
		Valid:  &valid,
	})
}

var reasonDetail = map[domain.Reason]string{
	domain.ReasonMissing:   "both x-api-key and x-organization-id headers are required",
	domain.ReasonMalformed: "the key or the organization id is not well-formed",
	domain.ReasonInvalid:   "the key is not valid for this organization",
	domain.ReasonExpired:   "the key has expired",
	domain.ReasonRevoked:   "the key has been revoked",
}

func errorCodeLabel(err error) string { return domain.ErrorCode(err) }

// noCache reports whether the request asks for an answer from the source of
// truth rather than from a cache (Cache-Control: no-cache, RFC 9111).
func noCache(r *http.Request) bool {
	for _, v := range r.Header.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(d), "no-cache") {
				return true
			}
		}
	}
	return false
}
