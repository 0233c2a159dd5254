package domain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"
)

// EventStore is what the command side needs from storage.
type EventStore interface {
	// Load returns the events of one key's stream in version order, or none
	// if the key does not exist in that organization.
	Load(ctx context.Context, orgID, keyID string) ([]Event, error)
	// Append commits events at the end of a stream whose last version must be
	// expected, and returns them with their positions. A broken expectation
	// is ErrConflict. With an IdempotencyRecord, the record is written in the
	// same transaction; if that idempotency key is taken within its window,
	// Append returns ErrIdempotencyTaken and commits nothing.
	Append(ctx context.Context, expected int64, events []Event, idem *IdempotencyRecord) ([]Event, error)
	// LookupIdempotency returns the record of an idempotency key used at or
	// after since.
	LookupIdempotency(ctx context.Context, orgID, key string, since time.Time) (IdempotencyRecord, bool, error)
}

// IdempotencyRecord ties a client's Idempotency-Key to the request it came
// with and the key that request created.
type IdempotencyRecord struct {
	OrgID       string
	Key         string
	RequestHash string
	KeyID       string
}

// ErrIdempotencyTaken tells the ledger that a concurrent request with the
// same Idempotency-Key committed first.
var ErrIdempotencyTaken = errors.New("idempotency key taken")

// IdempotencyWindow is how long an Idempotency-Key protects a generate.
const IdempotencyWindow = 24 * time.Hour

const maxIdempotencyKeyLen = 255

// Ledger runs the commands: load the stream, let the aggregate decide,
// append with the expected version.
type Ledger struct {
	Store     EventStore
	KeyPrefix string
	Now       func() time.Time
}

// Generated is the answer to GenerateKey. Secret is the plaintext key, set
// only on the request that created it; a retry with the same Idempotency-Key
// gets the key without it (Replayed).
type Generated struct {
	Key      *Key
	Secret   string
	Replayed bool
}

// GenerateKey issues a key. With a non-empty idempotencyKey, a retry of the
// same request within IdempotencyWindow returns the key the first one made,
// and another request with that idempotency key gets EMismatch.
func (l *Ledger) GenerateKey(ctx context.Context, cmd GenerateKey, idempotencyKey string) (Generated, error) {
	now := l.Now()
	if err := cmd.Validate(now); err != nil {
		return Generated{}, err
	}
	var idem *IdempotencyRecord
	if idempotencyKey != "" {
		if len(idempotencyKey) > maxIdempotencyKeyLen || !printableASCII(idempotencyKey) {
			return Generated{}, Errorf(EInvalid, "Idempotency-Key must be 1 to %d printable ASCII characters", maxIdempotencyKeyLen)
		}
		if g, ok, err := l.replay(ctx, cmd, idempotencyKey, now); ok || err != nil {
			return g, err
		}
		idem = &IdempotencyRecord{OrgID: cmd.OrgID, Key: idempotencyKey, RequestHash: requestHash(cmd)}
	}

	secret := NewKeySecret(l.KeyPrefix)
	k := &Key{}
	if err := k.Generate(cmd, NewKeyID(), secret, now); err != nil {
		return Generated{}, err
	}
	if idem != nil {
		idem.KeyID = k.ID
	}
	if _, err := l.Store.Append(ctx, 0, k.Changes(), idem); err != nil {
		if errors.Is(err, ErrIdempotencyTaken) {
			if g, ok, err := l.replay(ctx, cmd, idempotencyKey, now); ok || err != nil {
				return g, err
			}
			return Generated{}, ErrConflict
		}
		return Generated{}, err
	}
	return Generated{Key: k, Secret: secret}, nil
}

// replay answers a generate whose Idempotency-Key was already used.
func (l *Ledger) replay(ctx context.Context, cmd GenerateKey, idempotencyKey string, now time.Time) (Generated, bool, error) {
	rec, ok, err := l.Store.LookupIdempotency(ctx, cmd.OrgID, idempotencyKey, now.Add(-IdempotencyWindow))
	if err != nil || !ok {
		return Generated{}, false, err
	}
	if rec.RequestHash != requestHash(cmd) {
		return Generated{}, true, Errorf(EMismatch, "Idempotency-Key was already used with a different request")
	}
	events, err := l.Store.Load(ctx, cmd.OrgID, rec.KeyID)
	if err != nil {
		return Generated{}, true, err
	}
	return Generated{Key: KeyFromEvents(events), Replayed: true}, true, nil
}

// requestHash identifies what a generate asked for, so that a retry can be
// told from another request reusing the Idempotency-Key.
// The expiry counts as the instant it names, at stored precision, so that
// one time written in two zones is the same request.
func requestHash(cmd GenerateKey) string {
	var expires *time.Time
	if cmd.ExpiresAt != nil {
		t := Truncate(*cmd.ExpiresAt)
		expires = &t
	}
	b, _ := json.Marshal(struct {
		Name      string     `json:"name"`
		ExpiresAt *time.Time `json:"expires_at"`
	}{cmd.Name, expires})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// revokeAttempts bounds how often RevokeKey reloads after losing a race.
const revokeAttempts = 3

// RevokeKey revokes a key. A key already revoked, also by a concurrent
// request that won the race, is returned as it is and nothing is appended.
func (l *Ledger) RevokeKey(ctx context.Context, cmd RevokeKey) (*Key, error) {
	if err := cmd.Validate(); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		events, err := l.Store.Load(ctx, cmd.OrgID, cmd.KeyID)
		if err != nil {
			return nil, err
		}
		k := KeyFromEvents(events)
		if err := k.Revoke(cmd, l.Now()); err != nil {
			return nil, err
		}
		if len(k.Changes()) == 0 {
			return k, nil
		}
		_, err = l.Store.Append(ctx, k.Version-int64(len(k.Changes())), k.Changes(), nil)
		if errors.Is(err, ErrConflict) && attempt < revokeAttempts {
			continue
		}
		if err != nil {
			return nil, err
		}
		return k, nil
	}
}
