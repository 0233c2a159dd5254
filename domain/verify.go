package domain

import (
	"context"
	"time"
)

// Reason says why a verification failed. The values are part of the HTTP
// contract.
type Reason string

const (
	ReasonMissing   Reason = "missing"   // no key or no organization header
	ReasonMalformed Reason = "malformed" // not a key of this ledger's format
	ReasonInvalid   Reason = "invalid"   // unknown, or a key of another organization
	ReasonExpired   Reason = "expired"
	ReasonRevoked   Reason = "revoked"
)

// KeyLookup finds a key by the digest of its plaintext. It returns nil, nil
// when no key has that digest.
type KeyLookup interface {
	LookupKey(ctx context.Context, hash KeyHash) (*Key, error)
}

// Verification is the outcome of checking a presented key.
type Verification struct {
	Reason Reason // empty when valid
	Key    *Key   // set when valid
}

// Valid reports whether the key was accepted. The zero Verification, as
// returned beside an error, is not valid: a caller that forgets the error
// still fails closed.
func (v Verification) Valid() bool { return v.Reason == "" && v.Key != nil }

// Verify checks a presented key against an organization. Malformed input is
// refused before any lookup; a key of another organization gets the same
// answer as an unknown one, so that existence never leaks.
func Verify(ctx context.Context, lookup KeyLookup, prefix, apiKey, orgID string, now time.Time) (Verification, error) {
	if apiKey == "" || orgID == "" {
		return Verification{Reason: ReasonMissing}, nil
	}
	if !CheckKeyFormat(prefix, apiKey) || !ValidOrgID(orgID) {
		return Verification{Reason: ReasonMalformed}, nil
	}
	hash := HashKey(apiKey)
	k, err := lookup.LookupKey(ctx, hash)
	if err != nil {
		return Verification{}, err
	}
	if k == nil || !k.Hash.Equal(hash) {
		return Verification{Reason: ReasonInvalid}, nil
	}
	return k.Verdict(orgID, now), nil
}

// Verdict is the answer to a presentation, for orgID at now, of the key
// found for the presented key's digest: a key of another organization is
// invalid, as an unknown one is.
func (k *Key) Verdict(orgID string, now time.Time) Verification {
	if k.OrgID != orgID {
		return Verification{Reason: ReasonInvalid}
	}
	switch k.Status(now) {
	case StatusRevoked:
		return Verification{Reason: ReasonRevoked}
	case StatusExpired:
		return Verification{Reason: ReasonExpired}
	}
	return Verification{Key: k}
}
