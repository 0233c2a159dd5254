package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

func TestGenerate(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"201 returns the plaintext key once", generate201ReturnsThePlaintextKeyOnce},
		shared{"201 expiring within seven days is expires_soon", generate201ExpiringWithinSevenDaysIsExpiresSoon},
		shared{"201 accepts a name of exactly 100 characters", generate201AcceptsANameOfExactly100Characters},
		shared{"200 idempotent replay returns the same key without plaintext", generate200IdempotentReplayReturnsTheSameKeyWithoutPlaintext},
		shared{"422 same Idempotency-Key with another body", generate422SameIdempotencyKeyWithAnotherBody},
		shared{"400 refuses bad input without writing", generate400RefusesBadInputWithoutWriting},
		shared{"401 without the admin token", generate401WithoutTheAdminToken},
		shared{"413 body over 64 KiB", generate413BodyOver64KiB},
	)
}

func generate201ReturnsThePlaintextKeyOnce(t *testing.T, b *bundle, org string) {
	expires := b.clock.Now().Add(30 * 24 * time.Hour)

	res := b.admin(t, http.MethodPost, keysPath(org), genBody("production-key", &expires), hdr("X-Actor", "alice@example.com"))
	requireJSON(t, res, http.StatusCreated)
	require.Equal(t, "no-store", res.Header.Get("Cache-Control"))
	require.Empty(t, res.Header.Get("Idempotent-Replayed"))
	k := decode[keyBody](t, res)

	require.True(t, domain.ValidKeyID(k.ID), k.ID)
	require.Equal(t, org, k.OrgID)
	require.Equal(t, "production-key", k.Name)
	require.True(t, strings.HasPrefix(k.Key, keyPrefix+"_"), k.Key)
	require.True(t, domain.CheckKeyFormat(keyPrefix, k.Key), "the key carries a valid checksum")
	require.Equal(t, "...********"+k.Key[len(k.Key)-8:], k.Masked)
	require.Equal(t, "active", k.Status)
	require.Equal(t, domain.FormatTime(b.clock.Now()), k.CreatedAt)
	require.NotNil(t, k.ExpiresAt)
	require.Equal(t, domain.FormatTime(expires), *k.ExpiresAt)
	require.Nil(t, k.RevokedAt)

	// The key works at once, in its organization.
	requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)
}

func TestGenerate201WithoutExpiryNeverExpires(t *testing.T) {
	t.Parallel()
	b := setup(t) // moves the clock
	org := "acme"

	for _, body := range []string{`{"name":"no-expiry"}`, `{"name":"null-expiry","expires_at":null}`} {
		res := b.admin(t, http.MethodPost, keysPath(org), body)
		requireJSON(t, res, http.StatusCreated)
		m := fields(t, res)
		require.Contains(t, m, "expires_at")
		require.Nil(t, m["expires_at"], "expires_at is null, not absent")
		require.Equal(t, "active", m["status"])
	}
	b.clock.Advance(100 * 365 * 24 * time.Hour)
	for _, k := range b.list(t, org, "").Keys {
		require.Equal(t, "active", k.Status)
	}
}

func generate201ExpiringWithinSevenDaysIsExpiresSoon(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "short-lived", ptr(b.clock.Now().Add(2*24*time.Hour)))
	require.Equal(t, "expires_soon", k.Status)
}

func generate201AcceptsANameOfExactly100Characters(t *testing.T, b *bundle, org string) {
	for _, name := range []string{strings.Repeat("n", 100), strings.Repeat("é", 100), "  padded name  "} {
		k := b.generate(t, org, name, nil)
		require.Equal(t, name, k.Name)
	}
}

func generate200IdempotentReplayReturnsTheSameKeyWithoutPlaintext(t *testing.T, b *bundle, org string) {
	expires := b.clock.Now().Add(90 * 24 * time.Hour)
	body := genBody("ci-key", &expires)
	idem := hdr("Idempotency-Key", "req-7f3a")

	first := b.admin(t, http.MethodPost, keysPath(org), body, idem)
	requireJSON(t, first, http.StatusCreated)
	created := decode[keyBody](t, first)
	secret := created.Key
	created.Key = ""

	for i := 0; i < 3; i++ {
		again := b.admin(t, http.MethodPost, keysPath(org), body, idem)
		requireJSON(t, again, http.StatusOK)
		require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
		m := fields(t, again)
		require.NotContains(t, m, "key", "a replay never carries the plaintext")
		require.NotContains(t, string(again.Body), secret)
		require.Equal(t, created, decode[keyBody](t, again))
	}
	require.Equal(t, 1, b.eventCount(t, org, domain.TypeKeyGenerated))
	require.Len(t, b.list(t, org, "").Keys, 1)

	// The same expiry written in another zone is the same request.
	inParis := expires.In(time.FixedZone("CET", 3600)).Format(time.RFC3339)
	again := b.admin(t, http.MethodPost, keysPath(org), `{"name":"ci-key","expires_at":"`+inParis+`"}`, idem)
	requireJSON(t, again, http.StatusOK)
	require.Equal(t, created.ID, decode[keyBody](t, again).ID)

	// The same Idempotency-Key in another organization is another request.
	other := b.admin(t, http.MethodPost, keysPath(org+"-b"), body, idem)
	requireJSON(t, other, http.StatusCreated)
}

func generate422SameIdempotencyKeyWithAnotherBody(t *testing.T, b *bundle, org string) {
	idem := hdr("Idempotency-Key", "req-1")
	requireJSON(t, b.admin(t, http.MethodPost, keysPath(org), genBody("first", nil), idem), http.StatusCreated)

	for _, body := range []string{
		genBody("second", nil),
		genBody("first", ptr(b.clock.Now().Add(time.Hour))),
	} {
		res := b.admin(t, http.MethodPost, keysPath(org), body, idem)
		requireDetail(t, res, http.StatusUnprocessableEntity, "Idempotency-Key")
	}
	require.Equal(t, 1, b.eventCount(t, org, ""))
}

func generate400RefusesBadInputWithoutWriting(t *testing.T, b *bundle, org string) {
	now := b.clock.Now()
	cases := []struct {
		name, org, body, detail string
		headers                 []header
	}{
		{name: "malformed JSON", body: `{"name": "x"`, detail: "malformed JSON"},
		{name: "syntax error", body: `{name: x}`, detail: "malformed JSON"},
		{name: "not an object", body: `["x"]`, detail: "malformed JSON"},
		{name: "trailing data", body: `{"name":"x"} {"name":"y"}`, detail: "one JSON object"},
		{name: "empty body", body: ``, detail: "empty"},
		{name: "unknown field", body: `{"name":"x","scopes":["all"]}`, detail: "unknown field"},
		{name: "name of the wrong type", body: `{"name":42}`, detail: "name"},
		{name: "name missing", body: `{"expires_at":null}`, detail: "name is required"},
		{name: "name null", body: `{"name":null}`, detail: "name is required"},
		{name: "name empty", body: `{"name":""}`, detail: "name must not be empty"},
		{name: "name blank", body: `{"name":"   "}`, detail: "name must not be blank"},
		{name: "name of unicode spaces", body: `{"name":"\u00a0\u3000"}`, detail: "blank"},
		{name: "name over 100 characters", body: genBody(strings.Repeat("n", 101), nil), detail: "at most 100"},
		{name: "name with a newline", body: `{"name":"a\nb"}`, detail: "control"},
		{name: "name with a NUL", body: `{"name":"a\u0000b"}`, detail: "control"},
		{name: "name with an escape", body: `{"name":"a\u001bb"}`, detail: "control"},
		{name: "name with a bidi override", body: `{"name":"abc\u202edcba"}`, detail: "control"},
		{name: "name with a zero-width space", body: `{"name":"prod\u200bkey"}`, detail: "control"},
		{name: "expiry in the past", body: genBody("x", ptr(now.Add(-time.Hour))), detail: "future"},
		{name: "expiry now", body: genBody("x", &now), detail: "future"},
		{name: "expiry a date only", body: `{"name":"x","expires_at":"2099-01-31"}`, detail: "RFC 3339"},
		{name: "expiry without zone", body: `{"name":"x","expires_at":"2099-01-31T00:00:00"}`, detail: "RFC 3339"},
		{name: "expiry in words", body: `{"name":"x","expires_at":"tomorrow"}`, detail: "RFC 3339"},
		{name: "expiry a number", body: `{"name":"x","expires_at":4102444800}`, detail: "expires_at"},
		{name: "org id with a dot", org: "acme.corp", body: genBody("x", nil), detail: "organization id"},
		{name: "org id with a space", org: "acme corp", body: genBody("x", nil), detail: "organization id"},
		{name: "org id over 64 characters", org: strings.Repeat("o", 65), body: genBody("x", nil), detail: "organization id"},
		{name: "empty idempotency key", body: genBody("x", nil), headers: []header{hdr("Idempotency-Key", "")}, detail: "Idempotency-Key"},
		{name: "idempotency key too long", body: genBody("x", nil), headers: []header{hdr("Idempotency-Key", strings.Repeat("k", 256))}, detail: "Idempotency-Key"},
		{name: "actor with a control character", body: genBody("x", nil), headers: []header{hdr("X-Actor", "eve\tadmin")}, detail: "actor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := keysPath(org)
			if tc.org != "" {
				path = keysPath(tc.org)
			}
			res := b.admin(t, http.MethodPost, path, tc.body, tc.headers...)
			requireDetail(t, res, http.StatusBadRequest, tc.detail)
		})
	}
	require.Equal(t, 0, b.eventCount(t, org, ""), "bad input writes nothing")
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM idempotency_keys WHERE org_id = $1`, org))
}

func generate401WithoutTheAdminToken(t *testing.T, b *bundle, org string) {
	for name, headers := range map[string][]header{
		"no authorization":  nil,
		"wrong token":       {hdr("Authorization", "Bearer not-the-token")},
		"token prefix only": {hdr("Authorization", "Bearer "+adminToken[:len(adminToken)-1])},
		"token with suffix": {hdr("Authorization", "Bearer "+adminToken+"x")},
		"basic scheme":      {hdr("Authorization", "Basic "+adminToken)},
		"bare token":        {hdr("Authorization", adminToken)},
		"empty bearer":      {hdr("Authorization", "Bearer ")},
	} {
		res := b.do(t, http.MethodPost, keysPath(org), genBody("x", nil), headers...)
		requireProblem(t, res, http.StatusUnauthorized)
		require.Equal(t, `Bearer realm="keyledger"`, res.Header.Get("WWW-Authenticate"), name)
		require.NotContains(t, string(res.Body), adminToken)
	}
	require.Equal(t, 0, b.eventCount(t, org, ""))
}

func generate413BodyOver64KiB(t *testing.T, b *bundle, org string) {
	big := `{"name":"` + strings.Repeat("a", 70<<10) + `"}`
	res := b.admin(t, http.MethodPost, keysPath(org), big)
	requireDetail(t, res, http.StatusRequestEntityTooLarge, "65536 bytes")

	// Whitespace after a small object counts too.
	padded := `{"name":"x"}` + strings.Repeat(" ", 70<<10)
	requireProblem(t, b.admin(t, http.MethodPost, keysPath(org), padded), http.StatusRequestEntityTooLarge)
	require.Equal(t, 0, b.eventCount(t, org, ""))
}
