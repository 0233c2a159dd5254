package domain

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/stretchr/testify/require"
)

// TestKeyCommandsRecordExactlyTheExpectedEvents runs the aggregate's
// commands in the "given events, a command, want events or want error"
// style. A command that fails, or that changes nothing, records nothing and
// leaves the key's state as it was.
func TestKeyCommandsRecordExactlyTheExpectedEvents(t *testing.T) {
	t.Parallel()

	secret := testSecret
	in30d := testNow.Add(30 * 24 * time.Hour)
	berlin := time.FixedZone("CEST", 2*60*60)
	generated := generatedEvent(testOrg, secret, "production-key", nil)
	revoked := revokedEvent(testOrg, secret, "leaked", 2, testNow.Add(-time.Hour))

	gen := func(name string, expires *time.Time) GenerateKey {
		return GenerateKey{OrgID: testOrg, Name: name, ExpiresAt: expires, Actor: testActor}
	}
	revoke := func(org, keyID, reason string) RevokeKey {
		return RevokeKey{OrgID: org, KeyID: keyID, Reason: reason, Actor: testActor}
	}

	cases := []struct {
		name     string
		given    []Event
		cmd      any // GenerateKey or RevokeKey
		want     []Event
		wantCode string
	}{
		// GenerateKey: what is recorded.
		{
			name: "generate a key that never expires",
			cmd:  gen("production-key", nil),
			want: []Event{generatedEvent(testOrg, secret, "production-key", nil)},
		},
		{
			name: "generate a key with an expiry",
			cmd:  gen("production-key", &in30d),
			want: []Event{generatedEvent(testOrg, secret, "production-key", &in30d)},
		},
		{
			name: "generate stores the expiry in UTC at microsecond precision",
			cmd:  gen("production-key", timePtr(in30d.Add(123456789*time.Nanosecond).In(berlin))),
			want: []Event{generatedEvent(testOrg, secret, "production-key", timePtr(in30d.Add(123456*time.Microsecond)))},
		},
		{
			name: "generate accepts an expiry one microsecond from now",
			cmd:  gen("production-key", timePtr(testNow.Add(time.Microsecond))),
			want: []Event{generatedEvent(testOrg, secret, "production-key", timePtr(testNow.Add(time.Microsecond)))},
		},
		{
			name: "generate accepts a name of exactly 100 characters, counted in runes",
			cmd:  gen(strings.Repeat("é", 100), nil),
			want: []Event{generatedEvent(testOrg, secret, strings.Repeat("é", 100), nil)},
		},
		{
			name: "generate keeps inner and outer spaces of a name",
			cmd:  gen("  staging key ", nil),
			want: []Event{generatedEvent(testOrg, secret, "  staging key ", nil)},
		},
		{
			name: "generate accepts an empty actor",
			cmd:  GenerateKey{OrgID: testOrg, Name: "ci"},
			want: []Event{func() Event { e := generatedEvent(testOrg, secret, "ci", nil); e.Actor = ""; return e }()},
		},

		// GenerateKey: what is refused.
		{name: "generate refuses an empty name", cmd: gen("", nil), wantCode: EInvalid},
		{name: "generate refuses a blank name", cmd: gen("   ", nil), wantCode: EInvalid},
		{name: "generate refuses a name of only Unicode spaces", cmd: gen("\u00a0\u3000\u2003", nil), wantCode: EInvalid},
		{name: "generate refuses a name over 100 characters", cmd: gen(strings.Repeat("a", 101), nil), wantCode: EInvalid},
		{name: "generate refuses a name over 100 multibyte characters", cmd: gen(strings.Repeat("é", 101), nil), wantCode: EInvalid},
		{name: "generate refuses a name with a NUL", cmd: gen("prod\x00key", nil), wantCode: EInvalid},
		{name: "generate refuses a name with a newline", cmd: gen("prod\nkey", nil), wantCode: EInvalid},
		{name: "generate refuses a name with a tab", cmd: gen("prod\tkey", nil), wantCode: EInvalid},
		{name: "generate refuses a name with DEL", cmd: gen("prod\x7fkey", nil), wantCode: EInvalid},
		{name: "generate refuses a name with a C1 control", cmd: gen("prod\u0085key", nil), wantCode: EInvalid},
		{name: "generate refuses a name with a bidi override", cmd: gen("prod\u202ekey", nil), wantCode: EInvalid},
		{name: "generate refuses a name with a zero-width space", cmd: gen("prod\u200bkey", nil), wantCode: EInvalid},
		{name: "generate refuses a name with a line separator", cmd: gen("prod\u2028key", nil), wantCode: EInvalid},
		{name: "generate refuses a name of invalid UTF-8", cmd: gen("prod\xffkey", nil), wantCode: EInvalid},
		{name: "generate refuses a name of a truncated UTF-8 sequence", cmd: gen("prod\xc3", nil), wantCode: EInvalid},
		{name: "generate refuses an expiry in the past", cmd: gen("k", timePtr(testNow.Add(-time.Second))), wantCode: EInvalid},
		{name: "generate refuses an expiry equal to now", cmd: gen("k", timePtr(testNow)), wantCode: EInvalid},
		{name: "generate refuses an expiry equal to now in another zone", cmd: gen("k", timePtr(testNow.In(berlin))), wantCode: EInvalid},
		{
			name:     "generate refuses an expiry that is not after now at stored precision",
			cmd:      gen("k", timePtr(testNow.Add(999*time.Nanosecond))),
			wantCode: EInvalid,
		},
		{name: "generate refuses an empty org id", cmd: GenerateKey{OrgID: "", Name: "k"}, wantCode: EInvalid},
		{name: "generate refuses an org id with a space", cmd: GenerateKey{OrgID: "org acme", Name: "k"}, wantCode: EInvalid},
		{name: "generate refuses an org id with a slash", cmd: GenerateKey{OrgID: "org/acme", Name: "k"}, wantCode: EInvalid},
		{name: "generate refuses an org id with a trailing newline", cmd: GenerateKey{OrgID: "org\n", Name: "k"}, wantCode: EInvalid},
		{name: "generate refuses an org id over 64 characters", cmd: GenerateKey{OrgID: strings.Repeat("o", 65), Name: "k"}, wantCode: EInvalid},
		{name: "generate refuses an actor over 100 characters", cmd: GenerateKey{OrgID: testOrg, Name: "k", Actor: strings.Repeat("a", 101)}, wantCode: EInvalid},
		{name: "generate refuses an actor with control characters", cmd: GenerateKey{OrgID: testOrg, Name: "k", Actor: "a\rb"}, wantCode: EInvalid},
		{name: "generate refuses a key that already exists", given: []Event{generated}, cmd: gen("again", nil), wantCode: EConflict},

		// RevokeKey.
		{
			name:  "revoke an active key",
			given: []Event{generated},
			cmd:   revoke(testOrg, testKeyID, "rotated"),
			want:  []Event{revokedEvent(testOrg, secret, "rotated", 2, testNow)},
		},
		{
			name:  "revoke an expired key",
			given: []Event{generatedEvent(testOrg, secret, "old", timePtr(testNow.Add(-time.Hour)))},
			cmd:   revoke(testOrg, testKeyID, ""),
			want:  []Event{revokedEvent(testOrg, secret, "", 2, testNow)},
		},
		{
			name:  "revoke accepts a reason of exactly 500 characters",
			given: []Event{generated},
			cmd:   revoke(testOrg, testKeyID, strings.Repeat("r", 500)),
			want:  []Event{revokedEvent(testOrg, secret, strings.Repeat("r", 500), 2, testNow)},
		},
		{
			name:  "revoke a revoked key records nothing and is not an error",
			given: []Event{generated, revoked},
			cmd:   revoke(testOrg, testKeyID, "again"),
			want:  nil,
		},
		{name: "revoke a key of another organization is not found", given: []Event{generated}, cmd: revoke(otherOrg, testKeyID, ""), wantCode: ENotFound},
		{name: "revoke a revoked key of another organization is not found", given: []Event{generated, revoked}, cmd: revoke(otherOrg, testKeyID, ""), wantCode: ENotFound},
		{name: "revoke a key that does not exist is not found", cmd: revoke(testOrg, testKeyID, ""), wantCode: ENotFound},
		{name: "revoke with another key's id is not found", given: []Event{generated}, cmd: revoke(testOrg, "key_ZZZZZZZZZZZZZZZZZZZZ", ""), wantCode: ENotFound},
		{name: "revoke refuses a reason over 500 characters", given: []Event{generated}, cmd: revoke(testOrg, testKeyID, strings.Repeat("r", 501)), wantCode: EInvalid},
		{name: "revoke refuses a reason with control characters", given: []Event{generated}, cmd: revoke(testOrg, testKeyID, "bad\x1b[31m"), wantCode: EInvalid},
		{name: "revoke refuses a reason of invalid UTF-8", given: []Event{generated}, cmd: revoke(testOrg, testKeyID, "\xfe"), wantCode: EInvalid},
		{name: "revoke refuses a bad org id", given: []Event{generated}, cmd: revoke("org acme", testKeyID, ""), wantCode: EInvalid},
		{name: "revoke refuses an actor over 100 characters", given: []Event{generated}, cmd: RevokeKey{OrgID: testOrg, KeyID: testKeyID, Actor: strings.Repeat("a", 101)}, wantCode: EInvalid},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			given := withIDs(tc.given...)
			k := KeyFromEvents(given)
			before := state(k)

			var err error
			switch cmd := tc.cmd.(type) {
			case GenerateKey:
				err = k.Generate(cmd, testKeyID, secret, testNow)
			case RevokeKey:
				err = k.Revoke(cmd, testNow)
			default:
				t.Fatalf("unknown command %T", tc.cmd)
			}

			if tc.wantCode != "" {
				require.Error(t, err)
				require.Equal(t, tc.wantCode, ErrorCode(err), "error: %v", err)
				require.Empty(t, k.Changes(), "a refused command records nothing")
				require.Equal(t, before, state(k), "a refused command changes no state")
				requireNoSecret(t, err.Error(), secret)
				return
			}
			require.NoError(t, err)
			got := k.Changes()
			require.Equal(t, tc.want, zeroIDs(t, got))
			if len(got) == 0 {
				require.Equal(t, before, state(k), "a command that changes nothing leaves the state as it was")
			}
			// apply is the only place state changes: the key after the
			// command is the fold of everything it has recorded.
			require.Equal(t, state(KeyFromEvents(slices.Concat(given, got))), state(k))
		})
	}
}

// TestGenerateRecordsNoPlaintextKey protects "events never hold the
// plaintext key": the recorded event, on the wire, has the digest and the
// masked form and nothing else of the secret.
func TestGenerateRecordsNoPlaintextKey(t *testing.T) {
	t.Parallel()

	secret := NewKeySecret(DefaultKeyPrefix)
	k := &Key{}
	require.NoError(t, k.Generate(GenerateKey{OrgID: testOrg, Name: "prod", Actor: testActor}, NewKeyID(), secret, testNow))
	require.Len(t, k.Changes(), 1)

	b, err := json.Marshal(k.Changes()[0])
	require.NoError(t, err)
	requireNoSecret(t, string(b), secret)
	require.Contains(t, string(b), wantHash(secret))
	require.Contains(t, string(b), wantMasked(secret))
	require.True(t, k.Hash.Equal(HashKey(secret)))
}

// TestKeyStateIsTheFoldOfItsEvents checks that generate and revoke set the
// fields the list and the verify path read.
func TestKeyStateIsTheFoldOfItsEvents(t *testing.T) {
	t.Parallel()

	expires := testNow.Add(48 * time.Hour)
	revokedAt := testNow.Add(time.Hour)
	events := withIDs(
		generatedEvent(testOrg, testSecret, "production-key", &expires),
		revokedEvent(testOrg, testSecret, "leaked", 2, revokedAt),
	)

	k := KeyFromEvents(events[:1])
	require.Equal(t, testKeyID, k.ID)
	require.Equal(t, testOrg, k.OrgID)
	require.Equal(t, "production-key", k.Name)
	require.True(t, k.Hash.Equal(HashKey(testSecret)))
	require.Equal(t, wantMasked(testSecret), k.Masked)
	require.Equal(t, testNow, k.CreatedAt)
	require.Equal(t, &expires, k.ExpiresAt)
	require.Nil(t, k.RevokedAt)
	require.Equal(t, int64(1), k.Version)
	require.Empty(t, k.Changes(), "folding loaded events records nothing")

	k = KeyFromEvents(events)
	require.Equal(t, &revokedAt, k.RevokedAt)
	require.Equal(t, "leaked", k.RevokeReason)
	require.Equal(t, int64(2), k.Version)
	require.Equal(t, StatusRevoked, k.Status(testNow))

	empty := KeyFromEvents(nil)
	require.Equal(t, int64(0), empty.Version, "an empty stream is a key that does not exist")
}

// TestKeyAtShowsTheKeyAsItStoodThen protects the audit view of a key at a
// past time: events after t are not folded, and before its creation there
// is no key.
func TestKeyAtShowsTheKeyAsItStoodThen(t *testing.T) {
	t.Parallel()

	revokedAt := testNow.Add(time.Hour)
	events := withIDs(
		generatedEvent(testOrg, testSecret, "prod", nil),
		revokedEvent(testOrg, testSecret, "leaked", 2, revokedAt),
	)

	require.Nil(t, KeyAt(events, testNow.Add(-time.Nanosecond)), "no key before its creation")

	k := KeyAt(events, testNow)
	require.NotNil(t, k, "an event that occurred exactly at t is included")
	require.Equal(t, int64(1), k.Version)
	require.Nil(t, k.RevokedAt)

	k = KeyAt(events, revokedAt.Add(-time.Nanosecond))
	require.Equal(t, StatusActive, k.Status(revokedAt))

	k = KeyAt(events, revokedAt)
	require.Equal(t, StatusRevoked, k.Status(revokedAt))
	require.Equal(t, int64(2), k.Version)
}

// TestNewKeyIDIsWellFormedAndUnique protects key ids: public, random, and of
// the one documented shape.
func TestNewKeyIDIsWellFormedAndUnique(t *testing.T) {
	t.Parallel()

	seen := make(map[string]struct{}, 10000)
	for range 10000 {
		id := NewKeyID()
		require.True(t, ValidKeyID(id), id)
		require.True(t, strings.HasPrefix(id, KeyIDPrefix))
		_, dup := seen[id]
		require.False(t, dup, "duplicate key id %s", id)
		seen[id] = struct{}{}
	}

	for _, bad := range []string{"", "key_", "key_0123456789abcdefABC", "key_0123456789abcdefABCDE", "KEY_0123456789abcdefABCD", "key-0123456789abcdefABCD", "key_0123456789abcdefABC!", "key_0123456789abcdefABCD\n"} {
		require.False(t, ValidKeyID(bad), "%q", bad)
	}
}

// TestValidOrgIDFollowsTheDocumentedPattern pins ^[A-Za-z0-9_-]{1,64}$.
func TestValidOrgIDFollowsTheDocumentedPattern(t *testing.T) {
	t.Parallel()

	for _, ok := range []string{"a", "org_acme", "ORG-1", strings.Repeat("x", 64), "0", "_-"} {
		require.True(t, ValidOrgID(ok), "%q", ok)
	}
	for _, bad := range []string{"", strings.Repeat("x", 65), "org acme", "org/acme", "org.acme", "org\n", "\norg", "orgé", "org%20"} {
		require.False(t, ValidOrgID(bad), "%q", bad)
	}
}

// TestErrorCodeReadsTheCodeThroughWrapping protects the one-error-type
// contract the api package's status table relies on.
func TestErrorCodeReadsTheCodeThroughWrapping(t *testing.T) {
	t.Parallel()

	require.Equal(t, "", ErrorCode(nil))
	require.Equal(t, EInvalid, ErrorCode(Errorf(EInvalid, "bad %s", "name")))
	require.Equal(t, EConflict, ErrorCode(wrap(ErrConflict)))
	require.Equal(t, EInternal, ErrorCode(errPlain("boom")))

	require.Equal(t, "bad name", ErrorMessage(wrap(Errorf(EInvalid, "bad %s", "name"))))
	require.Equal(t, "internal error", ErrorMessage(errPlain("db password is hunter2")), "an internal error's detail never reaches the client")
}

type errPlain string

func (e errPlain) Error() string { return string(e) }

type wrapped struct{ err error }

func (w wrapped) Error() string { return "context: " + w.err.Error() }
func (w wrapped) Unwrap() error { return w.err }

func wrap(err error) error { return wrapped{err} }

// TestNewKeyIDIsUniqueAndOrderedByCreation protects key ids: well-formed,
// never repeated, beginning with the creation time so that ids made later
// sort after, byte by byte (as in the C collation) and case-insensitively
// (as a language's collation compares letters first).
func TestNewKeyIDIsUniqueAndOrderedByCreation(t *testing.T) {
	t.Parallel()

	const n = 10_000
	seen := make(map[string]struct{}, n)
	ids := make([]string, 0, n)
	for range n {
		id := NewKeyID()
		require.True(t, ValidKeyID(id), id)
		_, dup := seen[id]
		require.False(t, dup, "duplicate key id %s", id)
		seen[id] = struct{}{}
		ids = append(ids, id)
	}

	prefix := func(id string) string { return id[:len(KeyIDPrefix)+keyIDTimeLen] }
	for i := 1; i < n; i++ {
		require.LessOrEqual(t, prefix(ids[i-1]), prefix(ids[i]), "ids made in order")
	}
	first := NewKeyID()
	time.Sleep(2 * time.Millisecond)
	later := NewKeyID()
	require.Less(t, first, later)
	require.Less(t, strings.ToLower(first), strings.ToLower(later))

	// The time part is the creation time in milliseconds, in base 36.
	before := time.Now().UnixMilli()
	id := NewKeyID()
	ms, err := strconv.ParseInt(id[len(KeyIDPrefix):len(KeyIDPrefix)+keyIDTimeLen], 36, 64)
	require.NoError(t, err)
	require.GreaterOrEqual(t, ms, before)
	require.LessOrEqual(t, ms, time.Now().UnixMilli())
}

// TestValidateTextRefusesExactlyControlAndInvisibleCharacters checks every
// character of the Basic Multilingual Plane and the first supplementary one
// against the rule's definition, the ASCII fast path included.
func TestValidateTextRefusesExactlyControlAndInvisibleCharacters(t *testing.T) {
	for r := rune(0); r < 0x20000; r++ {
		if r >= 0xd800 && r <= 0xdfff { // surrogates are not characters
			continue
		}
		refused := unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
		err := validateText("name", "a"+string(r)+"b", 100, true)
		if refused != (err != nil) {
			t.Fatalf("U+%04X: refused %v, want %v (err %v)", r, err != nil, refused, err)
		}
	}
}
