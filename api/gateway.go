package api

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/keyledger/keyledger/domain"
)

// Verifier checks a presented key against an organization. The gateway
// client (consumers/gateway) is one; it returns an error when it cannot
// tell, and the proxy then refuses the request.
type Verifier interface {
	Verify(ctx context.Context, apiKey, orgID string) (domain.Verification, error)
}

// GatewayOptions tune NewGatewayProxy.
type GatewayOptions struct {
	// KeepKeyHeader forwards x-api-key to the upstream; by default it is
	// removed, so the upstream never sees a credential it does not need.
	KeepKeyHeader bool
	Logger        *slog.Logger
}

// KeyIDHeader names, on a forwarded request, the key that was accepted.
const KeyIDHeader = "X-Keyledger-Key-Id"

// NewGatewayProxy returns a reverse proxy to upstream that forwards only
// requests whose x-api-key is valid for their x-organization-id.
//
//   - A failed check is answered 401 with the problem body of /v1/verify
//     (WriteVerifyFailure), reason and all, and is not forwarded.
//   - When v returns an error the request is answered 503 and not
//     forwarded: the proxy fails closed.
//   - A request that carries either header more than once is refused as
//     malformed, so the upstream cannot read a value other than the one
//     checked.
//   - A forwarded request carries X-Keyledger-Key-Id (any value the client
//     sent is replaced) and the usual X-Forwarded-* headers; x-api-key is
//     removed unless KeepKeyHeader.
//
// The proxy serves no path of its own: every path belongs to the upstream.
func NewGatewayProxy(v Verifier, upstream *url.URL, o GatewayOptions) http.Handler {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.SetXForwarded()
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.WarnContext(r.Context(), "gateway: upstream failed", slog.String("request_id", requestID(r)),
				slog.String("upstream", upstream.Redacted()), slog.String("error", err.Error()))
			writeProblem(w, r, problem{Type: problemTypeBase + "bad_gateway", Title: http.StatusText(http.StatusBadGateway),
				Status: http.StatusBadGateway, Detail: "the upstream service did not answer"})
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Values("X-Api-Key")) > 1 || len(r.Header.Values("X-Organization-Id")) > 1 {
			WriteVerifyFailure(w, r, domain.ReasonMalformed)
			return
		}
		res, err := v.Verify(r.Context(), r.Header.Get("X-Api-Key"), r.Header.Get("X-Organization-Id"))
		if err != nil {
			log.ErrorContext(r.Context(), "gateway: cannot verify the key; refusing", slog.String("request_id", requestID(r)),
				slog.String("error", err.Error()))
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, problem{Type: problemTypeBase + domain.EUnavailable, Title: http.StatusText(http.StatusServiceUnavailable),
				Status: http.StatusServiceUnavailable, Detail: "the key cannot be checked now; retry later"})
			return
		}
		if !res.Valid() {
			WriteVerifyFailure(w, r, res.Reason)
			return
		}
		r.Header.Set(KeyIDHeader, res.Key.ID)
		if !o.KeepKeyHeader {
			r.Header.Del("X-Api-Key")
		}
		proxy.ServeHTTP(w, r)
	})
	return middleware.RequestID(h)
}
