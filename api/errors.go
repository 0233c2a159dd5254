package api

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/keyledger/keyledger/domain"
)

// eTooLarge is the one failure that exists only at the HTTP edge.
const eTooLarge = "too_large"

// statusOf is the one table from error codes to HTTP statuses.
var statusOf = map[string]int{
	domain.EInvalid:      http.StatusBadRequest,
	domain.ENotFound:     http.StatusNotFound,
	domain.EConflict:     http.StatusConflict,
	domain.EUnauthorized: http.StatusUnauthorized,
	domain.EMismatch:     http.StatusUnprocessableEntity,
	domain.EUnavailable:  http.StatusServiceUnavailable,
	domain.EInternal:     http.StatusInternalServerError,
	eTooLarge:            http.StatusRequestEntityTooLarge,
}

// problem is an RFC 9457 problem detail. Reason is set on verification
// failures.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Instance  string `json:"instance,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Valid     *bool  `json:"valid,omitempty"`
}

const problemTypeBase = "https://keyledger.dev/problems/"

// writeError renders err as problem+json. Internal and unavailable errors are
// logged with their cause; the client sees only a generic detail for them.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := domain.ErrorCode(err)
	status, ok := statusOf[code]
	if !ok {
		code, status = domain.EInternal, http.StatusInternalServerError
	}
	if code == domain.EInternal || code == domain.EUnavailable {
		s.log.ErrorContext(r.Context(), "request failed", slog.String("request_id", requestID(r)),
			slog.String("code", code), slog.String("error", err.Error()))
	}
	if code == domain.EUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keyledger"`)
	}
	if code == domain.EUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeProblem(w, r, problem{
		Type:   problemTypeBase + code,
		Title:  http.StatusText(status),
		Status: status,
		Detail: domain.ErrorMessage(err),
	})
}

func writeProblem(w http.ResponseWriter, r *http.Request, p problem) {
	p.Instance = r.URL.Path
	p.RequestID = requestID(r)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
