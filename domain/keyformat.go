package domain

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"hash/crc32"
	"regexp"
	"strings"
)

// The key format follows GitHub's token scheme: a readable prefix, an
// underscore, a base62 random part and a base62 CRC32 of the random part, so
// that a mistyped key is refused without a lookup and a secret scanner can
// recognise a leaked one.
//
//	kl_<32 base62 characters: 190 random bits><6 base62 characters: CRC32>
const (
	DefaultKeyPrefix = "kl"
	secretLen        = 32 // 32 * log2(62) = 190.5 bits, above the 160 DESIGN asks for
	checksumLen      = 6  // 62^6 > 2^32
	maskedTail       = 8
	maskedPrefix     = "...********"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

var prefixPattern = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// ValidKeyPrefix reports whether p may start a key: a lowercase letter, then
// up to 15 lowercase letters or digits.
func ValidKeyPrefix(p string) bool { return prefixPattern.MatchString(p) }

// KeyHash is the SHA-256 digest of a full key: the only form in which a key
// is stored or looked up.
type KeyHash [sha256.Size]byte

// HashKey returns the digest of a full key.
//
// It is on the hot path of every verification, so it does not allocate: a
// key of the usual length is copied into an array on the stack, since
// []byte(key) would escape into the hash function and be made on the heap.
func HashKey(key string) KeyHash {
	var buf [hashStackLen]byte
	if len(key) <= len(buf) {
		n := copy(buf[:], key)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(key))
}

// hashStackLen covers every key of this format: the longest prefix (16)
// plus "_", the random part and the checksum is 55 bytes.
const hashStackLen = 64

// String returns the digest in lowercase hex, as events carry it.
func (h KeyHash) String() string { return hex.EncodeToString(h[:]) }

// Equal compares two digests in constant time.
func (h KeyHash) Equal(o KeyHash) bool { return subtle.ConstantTimeCompare(h[:], o[:]) == 1 }

// ParseKeyHash reads a digest from its hex form.
func ParseKeyHash(s string) (KeyHash, error) {
	var h KeyHash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, Errorf(EInvalid, "key hash must be %d hex characters", 2*len(h))
	}
	copy(h[:], b)
	return h, nil
}

// NewKeySecret returns a fresh full key with the given prefix, its random
// part drawn from crypto/rand.
func NewKeySecret(prefix string) string {
	var b strings.Builder
	b.Grow(len(prefix) + 1 + secretLen + checksumLen)
	b.WriteString(prefix)
	b.WriteByte('_')
	random := randomBase62(secretLen)
	b.WriteString(random)
	b.WriteString(checksum(random))
	return b.String()
}

// randomBase62 draws n base62 characters with rejection sampling, so every
// character is uniform.
func randomBase62(n int) string {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			panic("keyledger: crypto/rand failed: " + err.Error()) // crypto/rand never fails on supported platforms
		}
		for _, c := range buf {
			if c < 248 { // 248 = 4*62: keeps the distribution uniform
				out = append(out, base62[c%62])
				if len(out) == n {
					break
				}
			}
		}
	}
	return string(out)
}

func checksum(random string) string {
	out := checksumOf(random)
	return string(out[:])
}

// checksumOf is the base62 CRC32 (IEEE) of s. It reads the string byte by
// byte through the standard table, rather than through crc32.ChecksumIEEE,
// whose []byte argument escapes and would cost an allocation per check.
func checksumOf(s string) [checksumLen]byte {
	c := ^uint32(0)
	for i := 0; i < len(s); i++ {
		c = crc32.IEEETable[byte(c)^s[i]] ^ (c >> 8)
	}
	c = ^c
	var out [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = base62[c%62]
		c /= 62
	}
	return out
}

// CheckKeyFormat reports whether key has the shape of a key with the given
// prefix and a correct checksum. It needs no lookup, so a gateway can refuse
// garbage cheaply.
func CheckKeyFormat(prefix, key string) bool {
	if len(key) != len(prefix)+1+secretLen+checksumLen ||
		!strings.HasPrefix(key, prefix) || key[len(prefix)] != '_' {
		return false
	}
	body := key[len(prefix)+1:]
	for i := 0; i < len(body); i++ {
		if !isBase62(body[i]) {
			return false
		}
	}
	want := checksumOf(body[:secretLen])
	sum := body[secretLen:]
	// Compared without branching on the bytes, as subtle.ConstantTimeCompare
	// would, but without converting the string to a slice.
	var diff byte
	for i := range want {
		diff |= want[i] ^ sum[i]
	}
	return diff == 0
}

func isBase62(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}

// MaskKey returns the form in which a key is shown after its creation: a
// fixed mask followed by its last 8 characters.
func MaskKey(key string) string {
	if len(key) < maskedTail {
		return maskedPrefix
	}
	return maskedPrefix + key[len(key)-maskedTail:]
}
