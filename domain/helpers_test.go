package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"hash/crc32"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testNow is the injected "current time" of every domain test: no assertion
// depends on the wall clock.
var testNow = time.Date(2025, time.June, 1, 12, 0, 0, 0, time.UTC)

const (
	testOrg   = "org_acme"
	otherOrg  = "org_globex"
	testKeyID = "key_0123456789abcdefABCD"
	testActor = "alice@example.com"
)

// testAlphabet is the base62 alphabet spelled out independently of the
// package's constant: digits, then upper case, then lower case. Keys already
// handed out depend on this order, so it is pinned here.
const testAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// uuidV7Pattern matches a lowercase canonical UUID with version nibble 7 and
// variant bits 10.
var uuidV7Pattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// base62Digit returns the value of one base62 character, computed without
// the package's tables.
func base62Digit(c byte) (int, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0'), true
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10, true
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 36, true
	}
	return 0, false
}

// testChecksum encodes the CRC32 (IEEE) of random as 6 base62 digits, most
// significant first, independently of the package's checksum function.
func testChecksum(random string) string {
	c := uint64(crc32.ChecksumIEEE([]byte(random)))
	out := make([]byte, 6)
	for i := 5; i >= 0; i-- {
		out[i] = testAlphabet[c%62]
		c /= 62
	}
	return string(out)
}

// makeSecret builds a well-formed key from a chosen random part, so that
// tests have deterministic keys.
func makeSecret(prefix, random string) string {
	return prefix + "_" + random + testChecksum(random)
}

// testSecret is a fixed, well-formed key used where the exact value matters
// (golden files, expected events).
var testSecret = makeSecret(DefaultKeyPrefix, "0123456789abcdefghijABCDEFGHIJkl")

// wantHash is the hex SHA-256 of a key, computed without HashKey.
func wantHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// wantMasked is the masked form DESIGN asks for, computed without MaskKey.
func wantMasked(secret string) string {
	return "...********" + secret[len(secret)-8:]
}

func timePtr(t time.Time) *time.Time { return &t }

// generatedEvent is the key.generated event a GenerateKey for testKeyID in
// org with the given secret must record at testNow.
func generatedEvent(org, secret, name string, expires *time.Time) Event {
	return Event{
		Type:          TypeKeyGenerated,
		OrgID:         org,
		KeyID:         testKeyID,
		StreamVersion: 1,
		OccurredAt:    testNow,
		Actor:         testActor,
		Data: KeyGenerated{
			KeyID:     testKeyID,
			Name:      name,
			KeyHash:   wantHash(secret),
			Masked:    wantMasked(secret),
			ExpiresAt: expires,
		},
	}
}

// revokedEvent is the key.revoked event for testKeyID at the given version.
func revokedEvent(org, secret, reason string, version int64, at time.Time) Event {
	return Event{
		Type:          TypeKeyRevoked,
		OrgID:         org,
		KeyID:         testKeyID,
		StreamVersion: version,
		OccurredAt:    at,
		Actor:         testActor,
		Data:          KeyRevoked{KeyID: testKeyID, KeyHash: wantHash(secret), Reason: reason},
	}
}

// withIDs gives events distinct ids, as committed events have.
func withIDs(events ...Event) []Event {
	out := make([]Event, len(events))
	for i, e := range events {
		e.ID = NewEventID()
		out[i] = e
	}
	return out
}

// zeroIDs checks that every event has a UUIDv7 id, then returns copies with
// the ids zeroed so that they compare to expected events.
func zeroIDs(t *testing.T, events []Event) []Event {
	t.Helper()
	if len(events) == 0 {
		return nil
	}
	out := make([]Event, len(events))
	for i, e := range events {
		require.Regexp(t, uuidV7Pattern, e.ID)
		e.ID = ""
		out[i] = e
	}
	return out
}

// state returns the key without its pending changes, for comparing the
// state a command left with the state its events fold to.
func state(k *Key) Key {
	s := *k
	s.changes = nil
	return s
}

// requireNoSecret fails if s contains the key or its random part.
func requireNoSecret(t *testing.T, s, secret string) {
	t.Helper()
	random := secret[strings.IndexByte(secret, '_')+1 : len(secret)-6]
	require.NotContains(t, s, secret)
	require.NotContains(t, s, random)
}
