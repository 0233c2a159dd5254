package domain

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Event types are wire names: they are stored, published and signed, so they
// never change once released. A new kind of fact gets a new constant, a
// golden file in testdata/ and, where an old shape must still be read, an
// upcaster in DecodeData.
const (
	TypeKeyGenerated = "key.generated"
	TypeKeyRevoked   = "key.revoked"
)

// Event is one immutable fact about one key, in the envelope in which it is
// stored and delivered. Position is set by the event store when the event is
// committed; it is zero on an event that was only decided. Seal is set on an
// event read back after the sealer sealed it, when the reader asked for it.
type Event struct {
	ID            string
	Type          string
	OrgID         string
	KeyID         string
	StreamVersion int64
	OccurredAt    time.Time
	Actor         string
	Data          EventData
	Position      int64
	Seal          *Seal
}

// Seal is an event's place in the audit log: its gapless sequence number,
// which is its leaf index in the Merkle tree, and its leaf hash in hex.
type Seal struct {
	Seq  int64
	Hash string
}

// EventData is the type-specific payload of an event.
type EventData interface {
	EventType() string
}

// KeyGenerated records that a key was issued. It holds the key's digest and
// masked form, never the key.
type KeyGenerated struct {
	KeyID     string     `json:"key_id"`
	Name      string     `json:"name"`
	KeyHash   string     `json:"key_hash"`
	Masked    string     `json:"masked"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// KeyRevoked records that a key was revoked, for good.
type KeyRevoked struct {
	KeyID   string `json:"key_id"`
	KeyHash string `json:"key_hash"`
	Reason  string `json:"reason"`
}

func (KeyGenerated) EventType() string { return TypeKeyGenerated }
func (KeyRevoked) EventType() string   { return TypeKeyRevoked }

// DecodeData reads the payload of an event of the given type.
func DecodeData(eventType string, raw []byte) (EventData, error) {
	var data EventData
	var err error
	switch eventType {
	case TypeKeyGenerated:
		var d KeyGenerated
		err = json.Unmarshal(raw, &d)
		data = d
	case TypeKeyRevoked:
		var d KeyRevoked
		err = json.Unmarshal(raw, &d)
		data = d
	default:
		return nil, fmt.Errorf("unknown event type %q", eventType)
	}
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", eventType, err)
	}
	return data, nil
}

// envelope is the JSON shape of an event on every wire: NATS, the HTTP API,
// exports. Its field names are part of the contract. Data is the payload
// itself when writing (one pass of the encoder), and its raw JSON when
// reading, which DecodeData then reads by type.
type envelope[D any] struct {
	ID            string `json:"id"`
	Type          string `json:"type"`
	OrgID         string `json:"org_id"`
	KeyID         string `json:"key_id"`
	StreamVersion int64  `json:"stream_version"`
	OccurredAt    string `json:"occurred_at"`
	Actor         string `json:"actor"`
	Data          D      `json:"data"`
	Position      int64  `json:"position"`
	Seq           *int64 `json:"seq,omitempty"`
	Hash          string `json:"hash,omitempty"`
}

// MarshalJSON writes the event in its wire envelope.
func (e Event) MarshalJSON() ([]byte, error) {
	env := envelope[EventData]{
		ID: e.ID, Type: e.Type, OrgID: e.OrgID, KeyID: e.KeyID,
		StreamVersion: e.StreamVersion, OccurredAt: FormatTime(e.OccurredAt),
		Actor: e.Actor, Data: e.Data, Position: e.Position,
	}
	if e.Seal != nil {
		seq := e.Seal.Seq
		env.Seq, env.Hash = &seq, e.Seal.Hash
	}
	return json.Marshal(env)
}

// UnmarshalJSON reads an event from its wire envelope.
func (e *Event) UnmarshalJSON(b []byte) error {
	var env envelope[json.RawMessage]
	if err := json.Unmarshal(b, &env); err != nil {
		return err
	}
	at, err := time.Parse(time.RFC3339Nano, env.OccurredAt)
	if err != nil {
		return fmt.Errorf("occurred_at: %w", err)
	}
	data, err := DecodeData(env.Type, env.Data)
	if err != nil {
		return err
	}
	*e = Event{
		ID: env.ID, Type: env.Type, OrgID: env.OrgID, KeyID: env.KeyID,
		StreamVersion: env.StreamVersion, OccurredAt: at, Actor: env.Actor,
		Data: data, Position: env.Position,
	}
	if env.Seq != nil {
		e.Seal = &Seal{Seq: *env.Seq, Hash: env.Hash}
	}
	return nil
}

// FormatTime writes a time as RFC 3339 in UTC, the one time format on the wire.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// Truncate brings a time to the precision Postgres keeps (microseconds), in
// UTC, so that a value read back compares equal to the value written.
func Truncate(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// NewEventID returns a UUID version 7: random, and ordered by creation time,
// which keeps the unique index on event ids compact.
func NewEventID() string {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		panic("keyledger: crypto/rand failed: " + err.Error())
	}
	ms := uint64(time.Now().UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = u[6]&0x0f | 0x70
	u[8] = u[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:], u[10:])
	return string(s[:])
}
