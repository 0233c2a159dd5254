package api_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNoSecretAtRestThePlaintextAppearsOnlyInTheGenerateResponse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	idem := hdr("Idempotency-Key", "once")
	body := genBody("production-key", nil)

	res := b.admin(t, http.MethodPost, keysPath("acme"), body, idem, hdr("X-Actor", "alice"))
	requireJSON(t, res, http.StatusCreated)
	k := decode[keyBody](t, res)
	secret := k.Key
	random := strings.TrimPrefix(secret, keyPrefix+"_") // a leak without the prefix is a leak too
	require.Contains(t, string(res.Body), secret)

	leaks := func(where, s string) {
		t.Helper()
		require.NotContains(t, s, random, "the plaintext leaked into %s", where)
	}
	var seen []*response
	seen = append(seen,
		b.admin(t, http.MethodPost, keysPath("acme"), body, idem), // replay
		b.admin(t, http.MethodGet, keyPath("acme", k.ID), ""),
		b.admin(t, http.MethodGet, keysPath("acme"), ""),
		b.admin(t, http.MethodGet, keysPath("acme")+"?q="+url.QueryEscape("production"), ""),
		b.admin(t, http.MethodGet, keyPath("acme", k.ID)+"/events", ""),
		b.do(t, http.MethodGet, "/v1/verify", "", hdr("X-Api-Key", secret), hdr("X-Organization-Id", "acme")),
		b.do(t, http.MethodPost, "/v1/verify", "", hdr("X-Api-Key", secret), hdr("X-Organization-Id", "globex")),
		b.admin(t, http.MethodPost, keysPath("acme"), body, idem, hdr("X-Actor", "x"), hdr("X-Api-Key", secret)),
		b.admin(t, http.MethodPost, keyPath("acme", k.ID)+"/revoke", `{"reason":"rotated"}`),
		b.do(t, http.MethodGet, "/v1/verify", "", hdr("X-Api-Key", secret), hdr("X-Organization-Id", "acme")),
		b.admin(t, http.MethodGet, keyPath("acme", k.ID)+"/events", ""),
	)
	b.awaitLedger(t, "the audit log to show both events", func() bool {
		res := b.admin(t, http.MethodGet, "/v1/orgs/acme/events", "")
		requireJSON(t, res, http.StatusOK)
		seen = append(seen, res)
		return len(decode[eventsBody](t, res).Events) == 2
	})
	seen = append(seen, b.do(t, http.MethodGet, "/metrics", ""))
	for i, res := range seen {
		require.Less(t, res.Status, 500, "response %d", i)
		leaks("a response body", string(res.Body))
		for name, values := range res.Header {
			leaks("the "+name+" header", strings.Join(values, " "))
		}
	}

	logs := b.logs.String()
	require.NotEmpty(t, logs)
	leaks("the log", logs)
	require.NotContains(t, logs, adminToken, "the admin token never reaches the log")

	rows := b.tableRows(t)
	require.NotEmpty(t, rows["events"])
	require.NotEmpty(t, rows["key_list"])
	require.NotEmpty(t, rows["key_lookup"])
	require.NotEmpty(t, rows["idempotency_keys"])
	for table, texts := range rows {
		for _, text := range texts {
			leaks("table "+table, text)
		}
	}
}
