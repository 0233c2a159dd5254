package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// Checkpoint is a signed statement of the log's size and root hash, in the
// C2SP tlog-checkpoint format: the origin line (the name of the log, which is
// also the signing key's name), the tree size in decimal, the root hash in
// base64, each on its own line, then the signed note's signature lines.
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   []byte
}

// Text is the checkpoint's body, the text that is signed.
func (c Checkpoint) Text() string {
	return fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root))
}

// ParseCheckpoint reads a checkpoint body (not verifying any signature).
func ParseCheckpoint(text string) (Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[0] == "" {
		return Checkpoint{}, errors.New("checkpoint: want an origin, a size and a root hash, one per line")
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("checkpoint: tree size %q is not a decimal number", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != HashSize {
		return Checkpoint{}, fmt.Errorf("checkpoint: root hash %q is not %d bytes of base64", lines[2], HashSize)
	}
	return Checkpoint{Origin: lines[0], Size: size, Root: root}, nil
}

// Sign returns the checkpoint as a signed note. The signer's name must be the
// origin.
func (c Checkpoint) Sign(signer note.Signer) ([]byte, error) {
	if signer.Name() != c.Origin {
		return nil, fmt.Errorf("checkpoint origin %q is not the signing key's name %q", c.Origin, signer.Name())
	}
	return note.Sign(&note.Note{Text: c.Text()}, signer)
}

// OpenCheckpoint verifies a signed checkpoint with the verifier and returns
// it. The checkpoint's origin must be the verifier's name.
func OpenCheckpoint(signed []byte, verifier note.Verifier) (Checkpoint, error) {
	n, err := note.Open(signed, note.VerifierList(verifier))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint signature: %w", err)
	}
	c, err := ParseCheckpoint(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != verifier.Name() {
		return Checkpoint{}, fmt.Errorf("checkpoint origin %q is not the key's name %q", c.Origin, verifier.Name())
	}
	return c, nil
}

// GenerateKey returns a new Ed25519 signing key named name, in the signed
// note formats: the signer key (secret: "PRIVATE+KEY+name+...") and the
// verifier key (public: "name+hash+key").
func GenerateKey(name string) (signerKey, verifierKey string, err error) {
	return note.GenerateKey(rand.Reader, name)
}

// NewSigner reads a signer key.
func NewSigner(signerKey string) (note.Signer, error) {
	s, err := note.NewSigner(strings.TrimSpace(signerKey))
	if err != nil {
		return nil, errors.New("not a signed-note signer key (PRIVATE+KEY+<name>+<hash>+<key>)")
	}
	return s, nil
}

// NewVerifier reads a verifier key, as `keyledger audit public-key` prints
// it.
func NewVerifier(verifierKey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(verifierKey))
	if err != nil {
		return nil, errors.New("not a signed-note verifier key (<name>+<hash>+<key>)")
	}
	return v, nil
}

// VerifierKeyOf derives the verifier key of an Ed25519 signer key.
func VerifierKeyOf(signerKey string) (string, error) {
	if _, err := NewSigner(signerKey); err != nil {
		return "", err
	}
	fields := strings.SplitN(strings.TrimPrefix(strings.TrimSpace(signerKey), "PRIVATE+KEY+"), "+", 3)
	if len(fields) != 3 {
		return "", errors.New("not a signed-note signer key (PRIVATE+KEY+<name>+<hash>+<key>)")
	}
	raw, err := base64.StdEncoding.DecodeString(fields[2])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("not an Ed25519 signer key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(fields[0], pub)
	if err != nil {
		return "", err
	}
	if _, err := note.NewVerifier(vkey); err != nil {
		return "", err
	}
	return vkey, nil
}
