package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

func TestGet200ShowsTheKeyMaskedWithItsStatus(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	k := b.generate(t, org, "production-key", ptr(b.clock.Now().Add(10*24*time.Hour)))

	res := b.admin(t, http.MethodGet, keyPath(org, k.ID), "")
	requireJSON(t, res, http.StatusOK)
	require.NotContains(t, fields(t, res), "key")
	require.NotContains(t, string(res.Body), k.Key)
	got := decode[keyBody](t, res)
	want := k
	want.Key = ""
	require.Equal(t, want, got)

	// The status is derived at read time.
	b.clock.Advance(4 * 24 * time.Hour)
	require.Equal(t, "expires_soon", decode[keyBody](t, b.admin(t, http.MethodGet, keyPath(org, k.ID), "")).Status)
	b.clock.Advance(6 * 24 * time.Hour)
	require.Equal(t, "expired", decode[keyBody](t, b.admin(t, http.MethodGet, keyPath(org, k.ID), "")).Status)
}

func TestGet(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"404 absent, malformed or another organization's key", get404AbsentMalformedOrAnotherOrganizationsKey},
		shared{"401 without the admin token", get401WithoutTheAdminToken},
	)
}

func get404AbsentMalformedOrAnotherOrganizationsKey(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "production-key", nil)

	cases := map[string]string{
		"absent":             keyPath(org, domain.NewKeyID()),
		"malformed key id":   keyPath(org, "not-a-key-id"),
		"key id too short":   keyPath(org, k.ID[:len(k.ID)-1]),
		"the plaintext":      keyPath(org, k.Key),
		"another org":        keyPath(org+"-b", k.ID),
		"org differing case": keyPath(strings.ToUpper(org), k.ID),
	}
	bodies := map[string]map[string]any{}
	for name, path := range cases {
		res := b.admin(t, http.MethodGet, path, "")
		p := requireProblem(t, res, http.StatusNotFound)
		require.Equal(t, "key not found", p["detail"], name)
		require.NotContains(t, string(res.Body), "production-key")
		delete(p, "request_id")
		delete(p, "instance")
		bodies[name] = p
	}
	require.Equal(t, bodies["absent"], bodies["another org"], "another organization's key is answered as an absent one")
}

func get401WithoutTheAdminToken(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "production-key", nil)
	res := b.do(t, http.MethodGet, keyPath(org, k.ID), "")
	requireProblem(t, res, http.StatusUnauthorized)
	require.Equal(t, `Bearer realm="keyledger"`, res.Header.Get("WWW-Authenticate"))
	require.NotContains(t, string(res.Body), "production-key")
}
