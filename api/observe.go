package api

import (
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/domain"
)

// metrics are what an operator watches: request rate, errors and latency per
// route, command outcomes, and verification results.
type metrics struct {
	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	commands        *prometheus.CounterVec
	commandDuration *prometheus.HistogramVec
	verifies        *prometheus.CounterVec
	verifyDuration  prometheus.Histogram
}

// latencyBuckets reach down to 100µs: verification is meant to be fast.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_http_requests_total", Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyledger_http_request_duration_seconds", Help: "HTTP request latency by route and method.",
			Buckets: latencyBuckets,
		}, []string{"route", "method"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_commands_total", Help: "Commands by name and outcome (ok or an error code).",
		}, []string{"command", "outcome"}),
		commandDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyledger_command_duration_seconds", Help: "Command latency, from decoded request to result.",
			Buckets: latencyBuckets,
		}, []string{"command"}),
		verifies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_verify_total", Help: "Verifications by result: valid, or the reason of the refusal.",
		}, []string{"result"}),
		verifyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyledger_verify_duration_seconds", Help: "Verification latency.", Buckets: latencyBuckets,
		}),
	}
	reg.MustRegister(m.requests, m.requestDuration, m.commands, m.commandDuration, m.verifies, m.verifyDuration)
	return m
}

// observeCommand counts a command's outcome and latency.
func (m *metrics) observeCommand(command string, start time.Time, err error) {
	outcome := "ok"
	if err != nil {
		outcome = domain.ErrorCode(err)
	}
	m.commands.WithLabelValues(command, outcome).Inc()
	m.commandDuration.WithLabelValues(command).Observe(time.Since(start).Seconds())
}

// logRequests writes one log line per request and records its metrics. It
// logs the route pattern and path, never headers or bodies, which may hold a
// key or a token.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		took := time.Since(start)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(route, r.Method, strconv.Itoa(status)).Inc()
		s.metrics.requestDuration.WithLabelValues(route, r.Method).Observe(took.Seconds())
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("request_id", requestID(r)),
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.String("path", r.URL.Path),
			slog.Int("status", status),
			slog.Int("bytes", ww.BytesWritten()),
			slog.Float64("duration_ms", float64(took.Microseconds())/1000),
		)
	})
}

// recoverPanics turns a panic in a handler into a 500 problem and a log line.
func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "panic", slog.String("request_id", requestID(r)), slog.Any("panic", v))
				writeProblem(w, r, problem{Type: problemTypeBase + "internal", Title: "Internal Server Error",
					Status: http.StatusInternalServerError, Detail: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}
