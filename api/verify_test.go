package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

func TestVerify200ValidKeyGETAndPOSTWithoutAdminToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	expires := b.clock.Now().Add(30 * 24 * time.Hour)
	k := b.generate(t, org, "production-key", &expires)
	never := b.generate(t, org, "forever", nil)

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		// POST with a body: the body is ignored, only headers count.
		res := b.do(t, method, "/v1/verify", `{"anything":"goes"}`, hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", org))
		requireJSON(t, res, http.StatusOK)
		require.Equal(t, k.ID, res.Header.Get("X-Keyledger-Key-Id"))
		require.Equal(t, map[string]any{
			"valid": true, "key_id": k.ID, "org_id": org, "name": "production-key",
			"status": "active", "expires_at": *k.ExpiresAt,
		}, fields(t, res), method)
		require.NotContains(t, string(res.Body), k.Key)

		res = b.do(t, method, "/v1/verify", "", hdr("x-api-key", never.Key), hdr("x-organization-id", org))
		requireJSON(t, res, http.StatusOK)
		v := decode[verifyBody](t, res)
		require.Equal(t, verifyBody{Valid: true, KeyID: never.ID, OrgID: org, Name: "forever", Status: "active"}, v)
		require.Contains(t, fields(t, res), "expires_at", "expires_at is null, not absent")
	}

	// A key that expires soon is still valid, and says so.
	b.clock.Advance(25 * 24 * time.Hour)
	res := b.verify(t, k.Key, org)
	requireJSON(t, res, http.StatusOK)
	require.Equal(t, "expires_soon", decode[verifyBody](t, res).Status)
}

// requireRefused checks a verification refusal and returns its problem body
// without the fields that differ per request.
func requireRefused(t testing.TB, res *response, reason string) map[string]any {
	t.Helper()
	p := requireProblem(t, res, http.StatusUnauthorized)
	require.Equal(t, reason, p["reason"])
	require.Equal(t, false, p["valid"])
	require.Equal(t, "https://keyledger.dev/problems/key_"+reason, p["type"])
	require.Equal(t, `APIKey realm="keyledger"`, res.Header.Get("WWW-Authenticate"))
	require.Empty(t, res.Header.Get("X-Keyledger-Key-Id"))
	require.Equal(t, "/v1/verify", p["instance"])
	delete(p, "request_id")
	delete(p, "instance")
	return p
}

func TestVerify(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"401 missing", verify401Missing},
		shared{"401 malformed", verify401Malformed},
		shared{"401 invalid: unknown key and another organization's key answer alike", verify401InvalidUnknownKeyAndAnotherOrganizationsKeyAnswerAlike},
	)
}

func verify401Missing(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	for name, headers := range map[string][]header{
		"no headers":         nil,
		"no key header":      {hdr("X-Organization-Id", org)},
		"no org header":      {hdr("X-Api-Key", k.Key)},
		"empty key header":   {hdr("X-Api-Key", ""), hdr("X-Organization-Id", org)},
		"empty org header":   {hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", "")},
		"key as bearer only": {hdr("Authorization", "Bearer "+k.Key), hdr("X-Organization-Id", org)},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			res := b.do(t, method, "/v1/verify", "", headers...)
			requireRefused(t, res, "missing")
			require.NotContains(t, string(res.Body), k.ID, name)
		}
	}
}

func verify401Malformed(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	// Swap the last character for another base62 one: the checksum breaks.
	last := k.Key[len(k.Key)-1]
	swapped := byte('0')
	if last == '0' {
		swapped = '1'
	}
	badChecksum := k.Key[:len(k.Key)-1] + string(swapped)
	// The checksum covers the random part, so only the prefix check refuses this.
	wrongPrefix := "gh" + strings.TrimPrefix(k.Key, keyPrefix)

	cases := map[string][]header{
		"bad checksum":             {hdr("X-Api-Key", badChecksum), hdr("X-Organization-Id", org)},
		"wrong prefix":             {hdr("X-Api-Key", wrongPrefix), hdr("X-Organization-Id", org)},
		"truncated":                {hdr("X-Api-Key", k.Key[:len(k.Key)-1]), hdr("X-Organization-Id", org)},
		"one character too many":   {hdr("X-Api-Key", k.Key+"A"), hdr("X-Organization-Id", org)},
		"not base62":               {hdr("X-Api-Key", k.Key[:10]+"-"+k.Key[11:]), hdr("X-Organization-Id", org)},
		"garbage":                  {hdr("X-Api-Key", "hunter2"), hdr("X-Organization-Id", org)},
		"org id with a dot":        {hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", "acme.corp")},
		"org id with a space":      {hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", "acme corp")},
		"org id over 64 chars":     {hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", strings.Repeat("a", 65))},
		"well-formed key, bad org": {hdr("X-Api-Key", domain.NewKeySecret(keyPrefix)), hdr("X-Organization-Id", "a/b")},
	}
	for name, headers := range cases {
		res := b.do(t, http.MethodGet, "/v1/verify", "", headers...)
		requireRefused(t, res, "malformed")
		require.NotContains(t, string(res.Body), k.ID, name)
	}
	// The genuine key still verifies.
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
}

func verify401InvalidUnknownKeyAndAnotherOrganizationsKeyAnswerAlike(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "production-key", nil)

	unknown := requireRefused(t, b.verify(t, domain.NewKeySecret(keyPrefix), org), "invalid")
	otherOrg := b.verify(t, k.Key, org+"-b")
	require.Equal(t, unknown, requireRefused(t, otherOrg, "invalid"), "existence never leaks")
	require.NotContains(t, string(otherOrg.Body), k.ID)
	require.NotContains(t, string(otherOrg.Body), "production-key")
	require.Equal(t, unknown, requireRefused(t, b.verify(t, k.Key, strings.ToUpper(org)), "invalid"), "org ids are case-sensitive")
}

func TestVerify401ExpiredOnceTheClockPassesExpiresAt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	k := b.generate(t, org, "short", ptr(b.clock.Now().Add(time.Hour)))
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)

	b.clock.Advance(time.Hour - time.Second)
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
	b.clock.Advance(time.Second)
	requireRefused(t, b.verify(t, k.Key, org), "expired")
	b.clock.Advance(365 * 24 * time.Hour)
	requireRefused(t, b.verify(t, k.Key, org), "expired")
	// Another organization still learns nothing, not even that it expired.
	requireRefused(t, b.verify(t, k.Key, org+"-b"), "invalid")
}

func TestVerify401Revoked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	k := b.generate(t, org, "k", ptr(b.clock.Now().Add(time.Hour)))
	b.revoke(t, org, k.ID)
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		res := b.do(t, method, "/v1/verify", "", hdr("X-Api-Key", k.Key), hdr("X-Organization-Id", org))
		requireRefused(t, res, "revoked")
	}
	// Revoked wins over expired.
	b.clock.Advance(2 * time.Hour)
	requireRefused(t, b.verify(t, k.Key, org), "revoked")
	requireRefused(t, b.verify(t, k.Key, org+"-b"), "invalid")
}
