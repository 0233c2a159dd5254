package domain

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenEvents are fixed events, one per wire shape. Each golden file holds
// the event's MarshalJSON output, indented, so that a change to any wire
// name, field or format shows up as a diff of testdata/.
func goldenEvents() map[string]Event {
	occurred := time.Date(2025, time.June, 1, 12, 0, 0, 123456000, time.UTC)
	expires := time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC)
	return map[string]Event{
		"key.generated": {
			ID:            "0197299a-6e40-7c3d-8e4f-5a6b7c8d9e0f",
			Type:          TypeKeyGenerated,
			OrgID:         testOrg,
			KeyID:         testKeyID,
			StreamVersion: 1,
			OccurredAt:    occurred,
			Actor:         testActor,
			Data: KeyGenerated{
				KeyID:     testKeyID,
				Name:      "production-key",
				KeyHash:   wantHash(testSecret),
				Masked:    wantMasked(testSecret),
				ExpiresAt: &expires,
			},
			Position: 41,
		},
		"key.generated.never-expires": {
			ID:            "0197299a-6e41-7a00-9f00-000000000001",
			Type:          TypeKeyGenerated,
			OrgID:         testOrg,
			KeyID:         testKeyID,
			StreamVersion: 1,
			OccurredAt:    occurred,
			Actor:         "",
			Data: KeyGenerated{
				KeyID:   testKeyID,
				Name:    "ci <runner> & \"quotes\"",
				KeyHash: wantHash(testSecret),
				Masked:  wantMasked(testSecret),
			},
			Position: 42,
		},
		"key.revoked": {
			ID:            "0197299a-7a00-7b11-a222-333344445555",
			Type:          TypeKeyRevoked,
			OrgID:         testOrg,
			KeyID:         testKeyID,
			StreamVersion: 2,
			OccurredAt:    occurred.Add(90 * time.Minute),
			Actor:         testActor,
			Data: KeyRevoked{
				KeyID:   testKeyID,
				KeyHash: wantHash(testSecret),
				Reason:  "leaked in a public repository",
			},
			Position: 57,
		},
		// A sealed event read back from the audit log carries its seq and
		// leaf hash; an unsealed one has neither member.
		"key.revoked.sealed": {
			ID:            "0197299a-7a00-7b11-a222-333344445556",
			Type:          TypeKeyRevoked,
			OrgID:         testOrg,
			KeyID:         testKeyID,
			StreamVersion: 2,
			OccurredAt:    occurred.Add(91 * time.Minute),
			Actor:         testActor,
			Data: KeyRevoked{
				KeyID:   testKeyID,
				KeyHash: wantHash(testSecret),
				Reason:  "",
			},
			Position: 58,
			Seal:     &Seal{Seq: 0, Hash: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"},
		},
	}
}

// TestEventEnvelopeMatchesGoldenFiles pins the wire envelope of every event
// type byte for byte, and checks that reading a golden file gives back the
// same event. Run with -update after a deliberate change of the wire shape
// (which needs a new event type or an upcaster, never an edit in place).
func TestEventEnvelopeMatchesGoldenFiles(t *testing.T) {
	t.Parallel()

	for name, event := range goldenEvents() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()

			got, err := json.Marshal(event)
			require.NoError(t, err)

			var indented bytes.Buffer
			require.NoError(t, json.Indent(&indented, got, "", "  "))
			indented.WriteByte('\n')

			path := filepath.Join("testdata", name+".golden.json")
			if *update {
				require.NoError(t, os.WriteFile(path, indented.Bytes(), 0o644))
			}
			golden, err := os.ReadFile(path)
			require.NoError(t, err, "run go test ./domain -run TestEventEnvelopeMatchesGoldenFiles -update to create it")
			require.Equal(t, string(golden), indented.String(), "the wire envelope of %s changed", name)

			var compact bytes.Buffer
			require.NoError(t, json.Compact(&compact, golden))
			require.Equal(t, string(compact.Bytes()), string(got), "MarshalJSON is the golden file, byte for byte, without the indentation")

			var back Event
			require.NoError(t, json.Unmarshal(golden, &back))
			require.Equal(t, event, back, "reading the golden file gives back the same event")

			requireNoSecret(t, string(golden), testSecret)
		})
	}
}

// TestEventEnvelopeHasExactlyTheDocumentedFields protects DESIGN section 3's
// envelope and payload field names, independently of the golden files.
func TestEventEnvelopeHasExactlyTheDocumentedFields(t *testing.T) {
	t.Parallel()

	require.Equal(t, "key.generated", TypeKeyGenerated)
	require.Equal(t, "key.revoked", TypeKeyRevoked)
	require.Equal(t, TypeKeyGenerated, KeyGenerated{}.EventType())
	require.Equal(t, TypeKeyRevoked, KeyRevoked{}.EventType())

	envelopeFields := []string{"id", "type", "org_id", "key_id", "stream_version", "occurred_at", "actor", "data", "position"}
	dataFields := map[string][]string{
		"key.generated":               {"key_id", "name", "key_hash", "masked", "expires_at"},
		"key.generated.never-expires": {"key_id", "name", "key_hash", "masked", "expires_at"},
		"key.revoked":                 {"key_id", "key_hash", "reason"},
		"key.revoked.sealed":          {"key_id", "key_hash", "reason"},
	}
	for name, event := range goldenEvents() {
		b, err := json.Marshal(event)
		require.NoError(t, err)
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(b, &m))
		want := envelopeFields
		if event.Seal != nil {
			want = append([]string{"seq", "hash"}, envelopeFields...)
		}
		require.ElementsMatch(t, want, keys(m), name)

		var d map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(m["data"], &d))
		require.ElementsMatch(t, dataFields[name], keys(d), name)
	}

	b, err := json.Marshal(goldenEvents()["key.generated.never-expires"])
	require.NoError(t, err)
	require.Contains(t, string(b), `"expires_at":null`, "a key that never expires has expires_at null")
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestOccurredAtIsWrittenInUTC protects the one time format on the wire:
// RFC 3339 in UTC, whatever the zone of the value.
func TestOccurredAtIsWrittenInUTC(t *testing.T) {
	t.Parallel()

	e := goldenEvents()["key.revoked"]
	e.OccurredAt = time.Date(2025, time.June, 1, 15, 30, 0, 500, time.FixedZone("X", 3*3600))
	b, err := json.Marshal(e)
	require.NoError(t, err)
	require.Contains(t, string(b), `"occurred_at":"2025-06-01T12:30:00.0000005Z"`)

	var back Event
	require.NoError(t, json.Unmarshal(b, &back))
	require.True(t, back.OccurredAt.Equal(e.OccurredAt))

	require.Equal(t, "2025-06-01T12:30:00Z", FormatTime(time.Date(2025, time.June, 1, 14, 30, 0, 0, time.FixedZone("Y", 2*3600))))
	require.Equal(t, time.Date(2025, time.June, 1, 12, 0, 0, 123456000, time.UTC),
		Truncate(time.Date(2025, time.June, 1, 14, 0, 0, 123456789, time.FixedZone("Y", 2*3600))),
		"Truncate keeps microseconds, in UTC, as Postgres does")
}

// TestDecodeDataRejectsUnknownTypes protects readers from silently folding
// a fact they do not understand.
func TestDecodeDataRejectsUnknownTypes(t *testing.T) {
	t.Parallel()

	for _, typ := range []string{"", "key.deleted", "KEY.GENERATED", "key.generated ", "generated", "KeyGenerated"} {
		d, err := DecodeData(typ, []byte(`{"key_id":"key_x"}`))
		require.Error(t, err, "%q", typ)
		require.Nil(t, d)
	}

	d, err := DecodeData(TypeKeyRevoked, []byte(`{"key_id":"key_x","key_hash":"ab","reason":"r"}`))
	require.NoError(t, err)
	require.Equal(t, KeyRevoked{KeyID: "key_x", KeyHash: "ab", Reason: "r"}, d)

	_, err = DecodeData(TypeKeyGenerated, []byte(`{"expires_at":"not a time"}`))
	require.Error(t, err)
	_, err = DecodeData(TypeKeyGenerated, []byte(`[1,2]`))
	require.Error(t, err)
}

// TestUnmarshalEventRejectsBrokenEnvelopes protects consumers of the wire
// from half-read events.
func TestUnmarshalEventRejectsBrokenEnvelopes(t *testing.T) {
	t.Parallel()

	good, err := json.Marshal(goldenEvents()["key.revoked"])
	require.NoError(t, err)

	cases := map[string]string{
		"not JSON":              `{`,
		"unknown type":          strings.Replace(string(good), `"type":"key.revoked"`, `"type":"key.deleted"`, 1),
		"occurred_at not time":  strings.Replace(string(good), `"occurred_at":"2025-06-01T13:30:00.123456Z"`, `"occurred_at":"yesterday"`, 1),
		"occurred_at missing":   strings.Replace(string(good), `"occurred_at":"2025-06-01T13:30:00.123456Z",`, ``, 1),
		"data of another shape": strings.Replace(string(good), `"data":{`, `"data":{"reason":7,`, 1),
	}
	for name, in := range cases {
		require.NotEqual(t, string(good), in, "case %q must change the input", name)
		var e Event
		require.Error(t, json.Unmarshal([]byte(in), &e), name)
	}
}

// TestNewEventIDIsUniqueUUIDv7 protects event ids: UUID version 7 (variant
// 10), carrying the creation time in milliseconds, never repeated.
func TestNewEventIDIsUniqueUUIDv7(t *testing.T) {
	t.Parallel()

	const n = 10_000
	before := time.Now().UnixMilli()
	seen := make(map[string]struct{}, n)
	for range n {
		id := NewEventID()
		require.Regexp(t, uuidV7Pattern, id)
		_, dup := seen[id]
		require.False(t, dup, "duplicate event id %s", id)
		seen[id] = struct{}{}
	}
	after := time.Now().UnixMilli()

	id := NewEventID()
	raw, err := hex.DecodeString(strings.ReplaceAll(id, "-", ""))
	require.NoError(t, err)
	require.Len(t, raw, 16)
	require.Equal(t, byte(0x7), raw[6]>>4, "version nibble")
	require.Equal(t, byte(0b10), raw[8]>>6, "variant bits")
	var ts [8]byte
	copy(ts[2:], raw[:6])
	ms := int64(binary.BigEndian.Uint64(ts[:]))
	require.GreaterOrEqual(t, ms, before, "the id carries its creation time")
	require.LessOrEqual(t, ms, time.Now().UnixMilli())
	require.GreaterOrEqual(t, ms, after)
}
