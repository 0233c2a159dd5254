package api_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestHealth(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"healthz 200 without credentials", healthz200WithoutCredentials},
		shared{"readyz 200 when the database answers", readyz200WhenTheDatabaseAnswers},
		shared{"unknown path 404 and wrong method 405 are problems", unknownPath404AndWrongMethod405AreProblems},
	)
}

func healthz200WithoutCredentials(t *testing.T, b *bundle, org string) {
	res := b.do(t, http.MethodGet, "/healthz", "")
	requireJSON(t, res, http.StatusOK)
	require.JSONEq(t, `{"status":"ok"}`, string(res.Body))
}

func readyz200WhenTheDatabaseAnswers(t *testing.T, b *bundle, org string) {
	res := b.do(t, http.MethodGet, "/readyz", "")
	requireJSON(t, res, http.StatusOK)
	require.JSONEq(t, `{"ready":true,"checks":{"database":"ok"}}`, string(res.Body))
}

func TestReadyz503WhenACheckFails(t *testing.T) {
	t.Parallel()
	b := setup(t, withReadyCheck("nats", func(context.Context) error {
		return errors.New("nats: no servers available for connection")
	}))
	res := b.do(t, http.MethodGet, "/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, res.Status)
	require.JSONEq(t, `{"ready":false,"checks":{"database":"ok","nats":"unavailable"}}`, string(res.Body))
	require.NotContains(t, string(res.Body), "no servers", "the cause stays in the log")
	require.Contains(t, b.logs.String(), "no servers available")
}

func TestMetrics200ExposesRequestCommandAndVerifyMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	k := b.generate(t, org, "k", nil)
	b.revoke(t, org, k.ID)
	b.verify(t, k.Key, org)
	b.verify(t, "garbage", org)

	res := b.do(t, http.MethodGet, "/metrics", "")
	require.Equal(t, http.StatusOK, res.Status, "metrics need no admin token")
	body := string(res.Body)
	for _, want := range []string{
		`keyledger_http_requests_total{method="POST",route="/v1/orgs/{org_id}/keys",status="201"} 1`,
		`keyledger_http_requests_total{method="GET",route="/v1/verify",status="401"} 2`,
		`keyledger_http_request_duration_seconds_bucket`,
		`keyledger_commands_total{command="generate_key",outcome="ok"} 1`,
		`keyledger_commands_total{command="revoke_key",outcome="ok"} 1`,
		`keyledger_command_duration_seconds_bucket`,
		`keyledger_verify_total{result="revoked"} 1`,
		`keyledger_verify_total{result="malformed"} 1`,
		`keyledger_verify_duration_seconds_count 2`,
	} {
		require.Contains(t, body, want)
	}
	require.NotContains(t, body, k.Key)
	require.NotContains(t, body, k.ID, "no per-key label")
	require.NotContains(t, body, org, "no per-organization label")
}

func unknownPath404AndWrongMethod405AreProblems(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)

	for _, path := range []string{"/", "/nope", "/v1", "/v1/keys", "/v2/verify", "/v1/orgs"} {
		res := b.do(t, http.MethodGet, path, "", bearer)
		requireDetail(t, res, http.StatusNotFound, "no such endpoint")
	}

	cases := []struct {
		method, path string
		allow        []string
	}{
		{http.MethodPost, "/healthz", []string{"GET"}},
		{http.MethodDelete, "/metrics", []string{"GET"}},
		{http.MethodPut, "/v1/verify", []string{"GET", "POST"}},
		{http.MethodDelete, keysPath(org), []string{"GET", "POST"}},
		{http.MethodDelete, keyPath(org, k.ID), []string{"GET"}},
		{http.MethodGet, keyPath(org, k.ID) + "/revoke", []string{"POST"}},
		{http.MethodPost, "/v1/orgs/" + org + "/events", []string{"GET"}},
	}
	for _, tc := range cases {
		res := b.do(t, tc.method, tc.path, "", bearer)
		p := requireProblem(t, res, http.StatusMethodNotAllowed)
		require.Contains(t, p["detail"], tc.method)
		require.Equal(t, strings.Join(tc.allow, ", "), res.Header.Get("Allow"), "%s %s", tc.method, tc.path)
	}
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
}
