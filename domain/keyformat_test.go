package domain

import (
	"crypto/sha256"
	"encoding/hex"
	"hash/crc32"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// keyLen is the length of a key with the given prefix:
// prefix, "_", 32 random characters, 6 checksum characters.
func keyLen(prefix string) int { return len(prefix) + 1 + 32 + 6 }

// TestNewKeySecretHasTheDocumentedShape protects the key format of DESIGN
// section 2: prefix, underscore, base62 body of at least 160 random bits,
// CRC32 checksum, accepted by CheckKeyFormat.
func TestNewKeySecretHasTheDocumentedShape(t *testing.T) {
	t.Parallel()

	require.GreaterOrEqual(t, float64(secretLen)*math.Log2(62), 160.0, "the random part must carry at least 160 bits")
	require.Equal(t, testAlphabet, base62, "the base62 alphabet of keys already issued never changes")

	for _, prefix := range []string{DefaultKeyPrefix, "sk", "a", "live0123456789ab"} {
		key := NewKeySecret(prefix)
		require.Len(t, key, keyLen(prefix))
		require.True(t, strings.HasPrefix(key, prefix+"_"), key)
		require.True(t, CheckKeyFormat(prefix, key), key)
		require.True(t, independentCheck(prefix, key), "the independent checker accepts it too: %s", key)

		body := key[len(prefix)+1:]
		for i := 0; i < len(body); i++ {
			_, ok := base62Digit(body[i])
			require.True(t, ok, "body character %q is base62", body[i])
		}
		require.Equal(t, testChecksum(body[:32]), body[32:], "the checksum is the base62 CRC32 of the random part")
	}
}

// TestMaskKeyShowsOnlyTheLastEightCharacters protects the masked form shown
// after creation: "...********" and the key's last 8 characters.
func TestMaskKeyShowsOnlyTheLastEightCharacters(t *testing.T) {
	t.Parallel()

	key := NewKeySecret(DefaultKeyPrefix)
	masked := MaskKey(key)
	require.Equal(t, "...********"+key[len(key)-8:], masked)
	require.Len(t, masked, len("...********")+8)
	require.NotContains(t, masked, key[:len(key)-8], "nothing before the last 8 characters leaks")

	require.Equal(t, "...********abcd1234", MaskKey("kl_whatever_abcd1234"))
	require.Equal(t, "...********", MaskKey("short"), "a string shorter than the tail shows nothing of itself")
	require.Equal(t, "...********", MaskKey(""))
}

// TestCheckKeyFormatRejectsEveryOneCharacterChange protects the point of
// the checksum: any single mistyped character in the random part or the
// checksum is refused without a lookup. CRC32 detects every burst of up to
// 32 bits, so this holds for every position and every replacement.
func TestCheckKeyFormatRejectsEveryOneCharacterChange(t *testing.T) {
	t.Parallel()

	for _, key := range []string{testSecret, NewKeySecret(DefaultKeyPrefix)} {
		require.True(t, CheckKeyFormat(DefaultKeyPrefix, key))
		start := len(DefaultKeyPrefix) + 1
		for i := start; i < len(key); i++ {
			for j := 0; j < len(testAlphabet); j++ {
				c := testAlphabet[j]
				if c == key[i] {
					continue
				}
				changed := key[:i] + string(c) + key[i+1:]
				require.False(t, CheckKeyFormat(DefaultKeyPrefix, changed), "position %d changed to %q: %s", i, c, changed)
			}
		}
	}
}

// TestCheckKeyFormatRejectsMalformedKeys covers prefixes, separators,
// lengths and alphabets other than the one keys are issued with.
func TestCheckKeyFormatRejectsMalformedKeys(t *testing.T) {
	t.Parallel()

	key := testSecret
	body := key[len("kl_"):]
	swapped := body[1:2] + body[0:1] + body[2:] // a transposition of two characters

	cases := []struct {
		name, prefix, key string
	}{
		{"empty", "kl", ""},
		{"prefix only", "kl", "kl_"},
		{"another prefix", "kl", "sk_" + body},
		{"upper-case prefix", "kl", "KL_" + body},
		{"no separator", "kl", "kl" + body},
		{"dash separator", "kl", "kl-" + body},
		{"longer prefix", "kl", "klx_" + body[1:]},
		{"prefix missing, body shifted", "kl", "_" + body + "xx"},
		{"one character short", "kl", key[:len(key)-1]},
		{"one character long", "kl", key + "0"},
		{"trailing newline", "kl", key + "\n"},
		{"leading space", "kl", " " + key[:len(key)-1]},
		{"non-base62 character in the random part", "kl", key[:5] + "-" + key[6:]},
		{"non-base62 character in the checksum", "kl", key[:len(key)-1] + "+"},
		{"NUL in the body", "kl", key[:10] + "\x00" + key[11:]},
		{"non-ASCII in the body", "kl", key[:10] + "é" + key[12:]},
		{"transposed characters", "kl", "kl_" + swapped},
		{"checked against another prefix", "sk", key},
		{"checked against an empty prefix", "", key},
		{"all zeros", "kl", "kl_" + strings.Repeat("0", 38)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.False(t, CheckKeyFormat(tc.prefix, tc.key), "%q", tc.key)
		})
	}

	// A key of another prefix is accepted only with its own prefix.
	sk := NewKeySecret("sk")
	require.True(t, CheckKeyFormat("sk", sk))
	require.False(t, CheckKeyFormat("kl", sk))
}

// TestNewKeySecretNeverRepeats protects "at least 160 random bits" in
// practice: 100,000 keys, all well-formed and all distinct.
func TestNewKeySecretNeverRepeats(t *testing.T) {
	t.Parallel()

	const n = 100_000
	seen := make(map[string]struct{}, n)
	var counts [256]int
	for range n {
		key := NewKeySecret(DefaultKeyPrefix)
		require.True(t, CheckKeyFormat(DefaultKeyPrefix, key), key)
		_, dup := seen[key]
		require.False(t, dup, "duplicate key after %d keys", len(seen))
		seen[key] = struct{}{}
		for i := 3; i < 3+32; i++ {
			counts[key[i]]++
		}
	}

	// Rejection sampling keeps every character equally likely. With 3.2M
	// characters each one is expected 51,613 times (sd about 225); a modulo
	// bias would put the first 8 characters 25% above the rest.
	expected := float64(n*32) / 62
	for i := 0; i < len(testAlphabet); i++ {
		c := testAlphabet[i]
		require.InDelta(t, expected, float64(counts[c]), expected*0.05, "character %q is drawn %d times", c, counts[c])
	}
}

// TestHashKeyIsHexSHA256AndRoundTrips protects the only stored form of a
// key: lowercase hex SHA-256, read back exactly, compared in constant time.
func TestHashKeyIsHexSHA256AndRoundTrips(t *testing.T) {
	t.Parallel()

	key := NewKeySecret(DefaultKeyPrefix)
	h := HashKey(key)
	sum := sha256.Sum256([]byte(key))
	require.Equal(t, hex.EncodeToString(sum[:]), h.String())
	require.Len(t, h.String(), 64)
	require.Equal(t, strings.ToLower(h.String()), h.String())

	back, err := ParseKeyHash(h.String())
	require.NoError(t, err)
	require.Equal(t, h, back)
	require.True(t, h.Equal(back))
	require.False(t, h.Equal(HashKey(key+"x")))

	upper, err := ParseKeyHash(strings.ToUpper(h.String()))
	require.NoError(t, err, "upper-case hex reads as the same digest")
	require.Equal(t, h, upper)

	for _, bad := range []string{"", "00", h.String()[:63], h.String()[:62], h.String() + "00", "zz" + h.String()[2:], " " + h.String()[1:]} {
		_, err := ParseKeyHash(bad)
		require.Error(t, err, "%q", bad)
		require.Equal(t, EInvalid, ErrorCode(err))
	}
}

// TestValidKeyPrefix pins which prefixes a deployment may configure: a
// lowercase letter, then up to 15 lowercase letters or digits.
func TestValidKeyPrefix(t *testing.T) {
	t.Parallel()

	for _, ok := range []string{"kl", "a", "sk", "live1", "k0", strings.Repeat("a", 16)} {
		require.True(t, ValidKeyPrefix(ok), "%q", ok)
	}
	for _, bad := range []string{"", "1kl", "KL", "Kl", "k_l", "kl_", "_kl", "k-l", "k l", strings.Repeat("a", 17), "kl\n", "\nkl", "klé"} {
		require.False(t, ValidKeyPrefix(bad), "%q", bad)
	}
}

// independentCheck decides whether key is a well-formed key with prefix,
// without the package's code: the right length, the prefix and "_", a base62
// body, and a checksum whose base62 value equals the CRC32 of the random
// part.
func independentCheck(prefix, key string) bool {
	if !strings.HasPrefix(key, prefix+"_") {
		return false
	}
	body := key[len(prefix)+1:]
	if len(body) != 32+6 {
		return false
	}
	for i := 0; i < len(body); i++ {
		if _, ok := base62Digit(body[i]); !ok {
			return false
		}
	}
	var sum uint64
	for i := 32; i < len(body); i++ {
		d, _ := base62Digit(body[i])
		sum = sum*62 + uint64(d)
	}
	return sum == uint64(crc32.ChecksumIEEE([]byte(body[:32])))
}

// FuzzCheckKeyFormat protects the parser of untrusted x-api-key headers: it
// never panics, and it accepts exactly the keys independentCheck accepts.
func FuzzCheckKeyFormat(f *testing.F) {
	seeds := []struct{ prefix, key string }{
		{"kl", testSecret},
		{"kl", makeSecret("kl", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef")},
		{"kl", makeSecret("kl", "00000000000000000000000000000000")},
		{"kl", makeSecret("kl", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")},
		{"sk", makeSecret("sk", "0123456789abcdefghijABCDEFGHIJkl")},
		{"", makeSecret("", "0123456789abcdefghijABCDEFGHIJkl")},
		{"kl", testSecret[:len(testSecret)-1] + "x"},
		{"kl", testSecret[:len(testSecret)-1]},
		{"kl", testSecret + "0"},
		{"kl", "sk" + testSecret[2:]},
		{"kl", "kl-" + testSecret[3:]},
		{"kl", strings.Replace(testSecret, "a", "-", 1)},
		{"kl", ""},
		{"kl", "kl_"},
		{"kl", "kl_" + strings.Repeat("\xff", 38)},
		{"", ""},
		{"kl", "\x00"},
	}
	for _, s := range seeds {
		f.Add(s.prefix, s.key)
	}

	f.Fuzz(func(t *testing.T, prefix, key string) {
		got := CheckKeyFormat(prefix, key)
		if want := independentCheck(prefix, key); got != want {
			t.Fatalf("CheckKeyFormat(%q, %q) = %v, want %v", prefix, key, got, want)
		}
		if got && len(key) != keyLen(prefix) {
			t.Fatalf("accepted %q of length %d, want %d", key, len(key), keyLen(prefix))
		}
		if m := MaskKey(key); !strings.HasPrefix(m, "...********") || len(m) > len("...********")+8 {
			t.Fatalf("MaskKey(%q) = %q", key, m)
		}

		// Most mutations break the checksum; also exercise the accepting
		// path by giving the fuzzed random part its correct checksum.
		if len(key) >= 32 {
			random := key[len(key)-32:]
			fixed := makeSecret(prefix, random)
			got, want := CheckKeyFormat(prefix, fixed), independentCheck(prefix, fixed)
			if got != want {
				t.Fatalf("CheckKeyFormat(%q, %q) = %v, want %v", prefix, fixed, got, want)
			}
			allBase62 := true
			for i := 0; i < len(random); i++ {
				if _, ok := base62Digit(random[i]); !ok {
					allBase62 = false
				}
			}
			if got != allBase62 {
				t.Fatalf("CheckKeyFormat(%q, %q) = %v for a base62 random part with its checksum", prefix, fixed, got)
			}
		}
	})
}
