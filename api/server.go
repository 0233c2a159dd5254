package api

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyledger/keyledger/domain"
)

// Commands runs the commands that change keys.
type Commands interface {
	GenerateKey(ctx context.Context, cmd domain.GenerateKey, idempotencyKey string) (domain.Generated, error)
	RevokeKey(ctx context.Context, cmd domain.RevokeKey) (*domain.Key, error)
}

// EventLog reads events: one key's history and an organization's audit log.
type EventLog interface {
	Load(ctx context.Context, orgID, keyID string) ([]domain.Event, error)
	OrgLog(ctx context.Context, orgID, after string, limit int) ([]domain.Event, string, error)
}

// Check is one readiness check: it returns nil when its dependency answers.
type Check func(ctx context.Context) error

// Deps is everything the API needs, built by cmd/keyledger.
type Deps struct {
	Commands Commands
	Keys     domain.KeyReader
	Lookup   domain.KeyLookup
	// Authority, if set, is the lookup behind a caching Lookup: /v1/verify
	// uses it for a request with Cache-Control: no-cache, as a gateway
	// client sends on a cache miss.
	Authority domain.KeyLookup
	Events    EventLog
	// Audit serves the audit log's checkpoints and proofs; without it the
	// /v1/audit endpoints are absent.
	Audit      AuditLog
	AdminToken string
	KeyPrefix  string
	Now        func() time.Time
	Logger     *slog.Logger
	// Registry receives the API's metrics and is served on /metrics.
	Registry *prometheus.Registry
	// Ready holds the readiness checks by name.
	Ready map[string]Check
}

// Server is the HTTP API.
type Server struct {
	Deps
	log     *slog.Logger
	metrics *metrics
	router  chi.Router
}

// New builds the API's router.
func New(d Deps) *Server {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Registry == nil {
		d.Registry = prometheus.NewRegistry()
	}
	s := &Server{Deps: d, log: d.Logger, metrics: newMetrics(d.Registry)}
	r := chi.NewRouter()
	r.Use(middleware.RequestID, s.logRequests, s.recoverPanics)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, domain.Errorf(domain.ENotFound, "no such endpoint"))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", s.allowedMethods(r))
		writeProblem(w, r, problem{Type: problemTypeBase + "method_not_allowed", Title: "Method Not Allowed",
			Status: http.StatusMethodNotAllowed, Detail: r.Method + " is not allowed on this path"})
	})

	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", s.ready)
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(d.Registry, promhttp.HandlerOpts{Registry: d.Registry}))
	r.Get("/v1/verify", s.handle(s.verify))
	r.Post("/v1/verify", s.handle(s.verify))

	r.Route("/v1/orgs/{org_id}", func(r chi.Router) {
		r.Use(s.requireAdmin, s.requireOrg)
		r.Post("/keys", s.handle(s.generateKey))
		r.Get("/keys", s.handle(s.listKeys))
		r.Get("/keys/{key_id}", s.handle(s.getKey))
		r.Post("/keys/{key_id}/revoke", s.handle(s.revokeKey))
		r.Get("/keys/{key_id}/events", s.handle(s.keyEvents))
		r.Get("/events", s.handle(s.orgEvents))
	})
	if d.Audit != nil {
		r.Get("/v1/audit/checkpoint", s.handle(s.checkpoint))
		r.Route("/v1/audit/proof", func(r chi.Router) {
			r.Use(s.requireAdmin)
			r.Get("/inclusion", s.handle(s.inclusionProof))
			r.Get("/consistency", s.handle(s.consistencyProof))
		})
	}
	s.router = r
	return s
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// handle adapts a handler that returns an error to http.HandlerFunc.
func (s *Server) handle(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}
}

// requireAdmin checks the admin bearer token in constant time.
func (s *Server) requireAdmin(next http.Handler) http.Handler {
	want := []byte(s.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || len(want) == 0 || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			s.writeError(w, r, domain.Errorf(domain.EUnauthorized, "a valid admin token is required: Authorization: Bearer <token>"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireOrg refuses a malformed organization id before any handler runs.
func (s *Server) requireOrg(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !domain.ValidOrgID(chi.URLParam(r, "org_id")) {
			s.writeError(w, r, domain.Errorf(domain.EInvalid, "organization id must match ^[A-Za-z0-9_-]{1,64}$"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{}
	status := http.StatusOK
	for name, check := range s.Ready {
		if err := check(ctx); err != nil {
			checks[name] = "unavailable"
			status = http.StatusServiceUnavailable
			s.log.WarnContext(ctx, "readiness check failed", slog.String("check", name), slog.String("error", err.Error()))
			continue
		}
		checks[name] = "ok"
	}
	writeJSON(w, status, map[string]any{"ready": status == http.StatusOK, "checks": checks})
}

// allowedMethods lists the methods served on the request's path, for the
// Allow header that RFC 9110 requires on a 405 (chi sets it only in its
// default handler).
func (s *Server) allowedMethods(r *http.Request) string {
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		if s.router.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	return strings.Join(allowed, ", ")
}

func requestID(r *http.Request) string { return middleware.GetReqID(r.Context()) }
