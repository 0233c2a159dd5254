package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

func TestRevoke(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"200 marks the key revoked for good", revoke200MarksTheKeyRevokedForGood},
		shared{"200 empty body is allowed", revoke200EmptyBodyIsAllowed},
		shared{"404 absent, malformed or another organization's key", revoke404AbsentMalformedOrAnotherOrganizationsKey},
		shared{"400 refuses bad input without writing", revoke400RefusesBadInputWithoutWriting},
		shared{"401 without the admin token", revoke401WithoutTheAdminToken},
	)
}

func revoke200MarksTheKeyRevokedForGood(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "old-key", nil)

	res := b.admin(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", `{"reason":"rotated"}`, hdr("X-Actor", "bob@example.com"))
	requireJSON(t, res, http.StatusOK)
	require.NotContains(t, fields(t, res), "key")
	require.NotContains(t, string(res.Body), k.Key)
	got := decode[keyBody](t, res)
	require.Equal(t, "revoked", got.Status)
	require.NotNil(t, got.RevokedAt)
	require.Equal(t, domain.FormatTime(b.clock.Now()), *got.RevokedAt)
	require.Equal(t, k.ID, got.ID)
	require.Equal(t, k.Masked, got.Masked)
	require.Equal(t, k.CreatedAt, got.CreatedAt)

	events := b.keyEvents(t, org, k.ID)
	require.Len(t, events, 2)
	require.Equal(t, domain.TypeKeyRevoked, events[1].Type)
	require.Equal(t, "rotated", events[1].Data["reason"])
	require.Equal(t, "bob@example.com", events[1].Actor)

	p := requireProblem(t, b.verify(t, k.Key, org), http.StatusUnauthorized)
	require.Equal(t, "revoked", p["reason"])
	require.Equal(t, "revoked", decode[keyBody](t, b.admin(t, http.MethodGet, keyPath(org, k.ID), "")).Status)
}

func revoke200EmptyBodyIsAllowed(t *testing.T, b *bundle, org string) {
	for _, body := range []string{"", "{}", `{"reason":""}`, "null"} {
		k := b.generate(t, org, "k", nil)
		res := b.admin(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", body)
		requireJSON(t, res, http.StatusOK)
		require.Equal(t, "revoked", decode[keyBody](t, res).Status, "body %q", body)
	}
}

func TestRevoke200AgainChangesNothingAndAppendsNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	k := b.generate(t, org, "k", nil)
	first := b.revoke(t, org, k.ID)
	revokedAt := *first.RevokedAt

	b.clock.Advance(time.Hour)
	for i := 0; i < 3; i++ {
		res := b.admin(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", `{"reason":"again"}`, hdr("X-Actor", "mallory"))
		requireJSON(t, res, http.StatusOK)
		again := decode[keyBody](t, res)
		require.Equal(t, "revoked", again.Status)
		require.Equal(t, revokedAt, *again.RevokedAt, "the first revocation stands")
	}
	require.Equal(t, 1, b.eventCount(t, org, domain.TypeKeyRevoked))
	events := b.keyEvents(t, org, k.ID)
	require.Len(t, events, 2)
	require.Equal(t, "test", events[1].Data["reason"])
}

func revoke404AbsentMalformedOrAnotherOrganizationsKey(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	for name, path := range map[string]string{
		"absent":           keyPath(org, domain.NewKeyID()),
		"malformed key id": keyPath(org, "nope"),
		"another org":      keyPath(org+"-b", k.ID),
	} {
		res := b.admin(t, http.MethodPost, path+"/revoke", `{"reason":"x"}`)
		p := requireProblem(t, res, http.StatusNotFound)
		require.Equal(t, "key not found", p["detail"], name)
	}
	require.Equal(t, 1, b.eventCount(t, org, ""), "no event appended")
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
}

func revoke400RefusesBadInputWithoutWriting(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	cases := map[string]struct {
		body, detail string
		headers      []header
	}{
		"malformed JSON":             {body: `{"reason":`, detail: "malformed JSON"},
		"unknown field":              {body: `{"reason":"x","force":true}`, detail: "unknown field"},
		"reason of the wrong type":   {body: `{"reason":1}`, detail: "reason"},
		"reason over 500 characters": {body: `{"reason":"` + strings.Repeat("r", 501) + `"}`, detail: "at most 500"},
		"reason with a control char": {body: `{"reason":"a\u0007b"}`, detail: "control"},
		"trailing data":              {body: `{} {}`, detail: "one JSON object"},
		"actor over 100 characters":  {body: `{}`, headers: []header{hdr("X-Actor", strings.Repeat("a", 101))}, detail: "actor"},
		"actor with a control char":  {body: `{}`, headers: []header{hdr("X-Actor", "a\tb")}, detail: "actor"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := b.admin(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", tc.body, tc.headers...)
			requireDetail(t, res, http.StatusBadRequest, tc.detail)
		})
	}
	big := `{"reason":"` + strings.Repeat("r", 70<<10) + `"}`
	requireProblem(t, b.admin(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", big), http.StatusRequestEntityTooLarge)
	requireDetail(t, b.admin(t, http.MethodPost, keyPath("acme.corp", k.ID)+"/revoke", ""), http.StatusBadRequest, "organization id")

	require.Equal(t, 0, b.eventCount(t, org, domain.TypeKeyRevoked))
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
}

func revoke401WithoutTheAdminToken(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	for _, headers := range [][]header{nil, {hdr("Authorization", "Bearer wrong")}} {
		res := b.do(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", "", headers...)
		requireProblem(t, res, http.StatusUnauthorized)
		require.Equal(t, `Bearer realm="keyledger"`, res.Header.Get("WWW-Authenticate"))
	}
	require.Equal(t, 0, b.eventCount(t, org, domain.TypeKeyRevoked))
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
}
