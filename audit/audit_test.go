package audit_test

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
)

// TestCanonicalizeFollowsRFC8785 checks the JCS rules the leaf encoding
// relies on, with RFC 8785's own examples where it has them.
func TestCanonicalizeFollowsRFC8785(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		// RFC 8785 section 3.2.3 (sorting), by UTF-16 code units.
		{`{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
		   "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		// RFC 8785 section 3.2.2 (numbers and string escapes).
		{`{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}`,
			`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{` { "b" : [ ] , "a" : { } } `, `{"a":{},"b":[]}`},
		{`{"n": -0, "i": 100, "s": "<&>\u2028"}`, "{\"i\":100,\"n\":0,\"s\":\"<&>\u2028\"}"},
	}
	for _, c := range cases {
		got, err := audit.Canonicalize([]byte(c.in))
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, string(got), c.in)
		again, err := audit.Canonicalize(got)
		require.NoError(t, err)
		require.Equal(t, string(got), string(again), "canonical form is a fixed point")
	}
	for _, bad := range []string{`{"a":1,"a":2}`, `{"a":`, `{} {}`, `[1e400]`, `nul`, "\"\xff\""} {
		_, err := audit.Canonicalize([]byte(bad))
		require.Error(t, err, bad)
	}
}

func sampleLeaf() audit.Leaf {
	prev := int64(3)
	return audit.Leaf{
		Seq: 7, OrgPrevSeq: &prev, Position: 12, ID: "0197299a-6e40-7c3d-8e4f-5a6b7c8d9e0f",
		Type: "key.revoked", OrgID: "acme", KeyID: "key_0123456789abcdefABCD", StreamVersion: 2,
		OccurredAt: "2026-03-03T09:14:00.5Z", Actor: "alice",
		Data: json.RawMessage(`{"reason": "leaked", "key_id": "key_0123456789abcdefABCD", "key_hash": "00ff"}`),
	}
}

// TestLeafEncodingIsPinned pins the leaf encoding, version 1, byte for byte:
// a change here breaks every hash ever signed.
func TestLeafEncodingIsPinned(t *testing.T) {
	t.Parallel()
	l := sampleLeaf()
	enc, err := l.Encode()
	require.NoError(t, err)
	require.Equal(t, `{"actor":"alice","data":{"key_hash":"00ff","key_id":"key_0123456789abcdefABCD","reason":"leaked"},`+
		`"id":"0197299a-6e40-7c3d-8e4f-5a6b7c8d9e0f","key_id":"key_0123456789abcdefABCD","occurred_at":"2026-03-03T09:14:00.5Z",`+
		`"org_id":"acme","org_prev_seq":3,"position":12,"seq":7,"stream_version":2,"type":"key.revoked","v":1}`, string(enc))
	// The encoding is JCS: canonicalizing it again changes nothing.
	again, err := audit.Canonicalize(enc)
	require.NoError(t, err)
	require.Equal(t, string(enc), string(again))

	h, err := l.Hash()
	require.NoError(t, err)
	// SHA-256(0x00 || encoding), computed independently (Python hashlib).
	require.Equal(t, "d8b77d6683b7a824d7739c47d9be051d4ce80b72d3817c5708b23751c79a44ad", hex.EncodeToString(h))

	l.OrgPrevSeq = nil
	enc, err = l.Encode()
	require.NoError(t, err)
	require.Contains(t, string(enc), `"org_prev_seq":null`)
}

func TestEveryFieldOfTheLeafChangesItsHash(t *testing.T) {
	t.Parallel()
	base, err := sampleLeaf().Hash()
	require.NoError(t, err)
	four := int64(4)
	for name, change := range map[string]func(*audit.Leaf){
		"seq":            func(l *audit.Leaf) { l.Seq++ },
		"org_prev_seq":   func(l *audit.Leaf) { l.OrgPrevSeq = &four },
		"no prev":        func(l *audit.Leaf) { l.OrgPrevSeq = nil },
		"position":       func(l *audit.Leaf) { l.Position++ },
		"id":             func(l *audit.Leaf) { l.ID = strings.Replace(l.ID, "0f", "0e", 1) },
		"type":           func(l *audit.Leaf) { l.Type = "key.generated" },
		"org_id":         func(l *audit.Leaf) { l.OrgID = "acmf" },
		"key_id":         func(l *audit.Leaf) { l.KeyID += "x" },
		"stream_version": func(l *audit.Leaf) { l.StreamVersion++ },
		"occurred_at":    func(l *audit.Leaf) { l.OccurredAt = "2026-03-03T09:14:00.6Z" },
		"actor":          func(l *audit.Leaf) { l.Actor = "mallory" },
		"data value": func(l *audit.Leaf) {
			l.Data = json.RawMessage(`{"reason":"leakeD","key_id":"key_0123456789abcdefABCD","key_hash":"00ff"}`)
		},
		"data name": func(l *audit.Leaf) {
			l.Data = json.RawMessage(`{"reasoN":"leaked","key_id":"key_0123456789abcdefABCD","key_hash":"00ff"}`)
		},
		"data member": func(l *audit.Leaf) {
			l.Data = json.RawMessage(`{"reason":"leaked","key_id":"key_0123456789abcdefABCD","key_hash":"00ff","x":null}`)
		},
	} {
		l := sampleLeaf()
		change(&l)
		h, err := l.Hash()
		require.NoError(t, err, name)
		require.NotEqual(t, base, h, name)
	}
	// Spacing and member order of the data do not: they are not content.
	l := sampleLeaf()
	l.Data = json.RawMessage(`{"key_hash":"00ff","key_id":"key_0123456789abcdefABCD","reason":"leaked"}`)
	h, err := l.Hash()
	require.NoError(t, err)
	require.Equal(t, base, h)
}

func TestCheckpointSignsAndOpensOnlyWithItsKey(t *testing.T) {
	t.Parallel()
	skey, vkey, err := audit.GenerateKey("example.com/log")
	require.NoError(t, err)
	derived, err := audit.VerifierKeyOf(skey)
	require.NoError(t, err)
	require.Equal(t, vkey, derived, "the public key is derived from the signing key")

	signer, err := audit.NewSigner(skey)
	require.NoError(t, err)
	root := make([]byte, 32)
	root[0] = 7
	signed, err := audit.Checkpoint{Origin: "example.com/log", Size: 42, Root: root}.Sign(signer)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(signed), "example.com/log\n42\nBwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— example.com/log "))

	v, err := audit.NewVerifier(vkey)
	require.NoError(t, err)
	cp, err := audit.OpenCheckpoint(signed, v)
	require.NoError(t, err)
	require.EqualValues(t, 42, cp.Size)
	require.Equal(t, root, cp.Root)

	altered := []byte(strings.Replace(string(signed), "\n42\n", "\n43\n", 1))
	_, err = audit.OpenCheckpoint(altered, v)
	require.Error(t, err)
	_, otherV, err := audit.GenerateKey("example.com/log")
	require.NoError(t, err)
	ov, err := audit.NewVerifier(otherV)
	require.NoError(t, err)
	_, err = audit.OpenCheckpoint(signed, ov)
	require.Error(t, err)

	_, err = audit.Checkpoint{Origin: "other", Size: 1, Root: root}.Sign(signer)
	require.Error(t, err, "the origin is the key's name")
	for _, bad := range []string{"", "PRIVATE+KEY+x", "not a key"} {
		_, err := audit.NewSigner(bad)
		require.Error(t, err)
		_, err = audit.NewVerifier(bad)
		require.Error(t, err)
	}
}

// FuzzCanonicalize checks that whatever parses as JSON canonicalizes to
// valid JSON of the same value, which canonicalizes to itself.
func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":[true,null,"x\u0000"]}`, `[1e3,-0,0.1,{"\u00e9":{}}]`, `"\ud83d\ude00"`, `{"a":{"a":{"a":[]}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := audit.Canonicalize(in)
		if err != nil {
			return
		}
		var a, b any
		if json.Unmarshal(in, &a) != nil {
			t.Fatalf("canonicalized invalid JSON %q", in)
		}
		require.NoError(t, json.Unmarshal(out, &b), "%q -> %q", in, out)
		require.Equal(t, a, b, "%q -> %q", in, out)
		again, err := audit.Canonicalize(out)
		require.NoError(t, err)
		require.Equal(t, string(out), string(again))
	})
}
