package projections

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// KeyList is the projector of the key list view.
type KeyList struct{}

// KeyLookup is the projector of the lookup view.
type KeyLookup struct{}

var (
	_ eventstore.Projector = KeyList{}
	_ eventstore.Projector = KeyLookup{}
)

// step queues the statement that applies a run of events of one type.
type step func(b *pgx.Batch, events []domain.Event) error

// Queue queues the statements that apply events to the key list; see
// queueSteps.
func (KeyList) Queue(b *pgx.Batch, events []domain.Event) error {
	return queueSteps(b, events, map[string]step{
		domain.TypeKeyGenerated: listGenerated,
		domain.TypeKeyRevoked:   listRevoked,
	})
}

// Queue queues the statements that apply events to the lookup view; see
// queueSteps.
func (KeyLookup) Queue(b *pgx.Batch, events []domain.Event) error {
	return queueSteps(b, events, map[string]step{
		domain.TypeKeyGenerated: lookupGenerated,
		domain.TypeKeyRevoked:   lookupRevoked,
	})
}

// queueSteps queues one statement per run of events of one type, so that a
// rebuild applies thousands of events per statement. Every key.generated
// goes first, in one statement: it is the first event of its stream, so no
// other event of the same key can precede it. The others keep ledger order.
// Every step is guarded by the key's version, so a replayed event changes
// nothing.
func queueSteps(b *pgx.Batch, events []domain.Event, steps map[string]step) error {
	generated := make([]domain.Event, 0, len(events))
	rest := make([]domain.Event, 0, len(events))
	for _, e := range events {
		if e.Type == domain.TypeKeyGenerated {
			generated = append(generated, e)
		} else {
			rest = append(rest, e)
		}
	}
	if len(generated) > 0 {
		if err := steps[domain.TypeKeyGenerated](b, generated); err != nil {
			return fmt.Errorf("apply %s: %w", domain.TypeKeyGenerated, err)
		}
	}
	for start := 0; start < len(rest); {
		end := start + 1
		for end < len(rest) && rest[end].Type == rest[start].Type {
			end++
		}
		apply, ok := steps[rest[start].Type]
		if !ok {
			return fmt.Errorf("projection: no apply step for %q", rest[start].Type)
		}
		if err := apply(b, rest[start:end]); err != nil {
			return fmt.Errorf("apply %s: %w", rest[start].Type, err)
		}
		start = end
	}
	return nil
}

// generatedColumns are the arrays both views insert from on key.generated.
type generatedColumns struct {
	orgs, ids, names, masked []string
	hashes                   [][]byte
	created                  []time.Time
	expires                  []*time.Time
	versions                 []int64
}

func generated(events []domain.Event) (generatedColumns, error) {
	var c generatedColumns
	for _, e := range events {
		d := e.Data.(domain.KeyGenerated)
		h, err := domain.ParseKeyHash(d.KeyHash)
		if err != nil {
			return c, fmt.Errorf("event %s: %w", e.ID, err)
		}
		c.orgs = append(c.orgs, e.OrgID)
		c.ids = append(c.ids, d.KeyID)
		c.names = append(c.names, d.Name)
		c.masked = append(c.masked, d.Masked)
		c.hashes = append(c.hashes, h[:])
		c.created = append(c.created, e.OccurredAt)
		c.expires = append(c.expires, d.ExpiresAt)
		c.versions = append(c.versions, e.StreamVersion)
	}
	return c, nil
}

// revokedColumns are the arrays both views update from on key.revoked.
type revokedColumns struct {
	orgs, ids, reasons []string
	hashes             [][]byte
	at                 []time.Time
	versions           []int64
}

func revoked(events []domain.Event) (revokedColumns, error) {
	var c revokedColumns
	for _, e := range events {
		d := e.Data.(domain.KeyRevoked)
		h, err := domain.ParseKeyHash(d.KeyHash)
		if err != nil {
			return c, fmt.Errorf("event %s: %w", e.ID, err)
		}
		c.orgs = append(c.orgs, e.OrgID)
		c.ids = append(c.ids, d.KeyID)
		c.reasons = append(c.reasons, d.Reason)
		c.hashes = append(c.hashes, h[:])
		c.at = append(c.at, e.OccurredAt)
		c.versions = append(c.versions, e.StreamVersion)
	}
	return c, nil
}

func listGenerated(b *pgx.Batch, events []domain.Event) error {
	c, err := generated(events)
	if err != nil {
		return err
	}
	b.Queue(`INSERT INTO key_list (org_id, key_id, name, masked, key_hash, created_at, expires_at, version)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
		ON CONFLICT (org_id, key_id) DO NOTHING`,
		c.orgs, c.ids, c.names, c.masked, c.hashes, c.created, c.expires, c.versions)
	return nil
}

func listRevoked(b *pgx.Batch, events []domain.Event) error {
	c, err := revoked(events)
	if err != nil {
		return err
	}
	b.Queue(`UPDATE key_list AS l SET revoked_at = u.at, revoke_reason = u.reason, version = u.version
		FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[]) AS u(org_id, key_id, at, reason, version)
		WHERE l.org_id = u.org_id AND l.key_id = u.key_id AND l.version < u.version`,
		c.orgs, c.ids, c.at, c.reasons, c.versions)
	return nil
}

func lookupGenerated(b *pgx.Batch, events []domain.Event) error {
	c, err := generated(events)
	if err != nil {
		return err
	}
	b.Queue(`INSERT INTO key_lookup (org_id, key_id, name, masked, key_hash, created_at, expires_at, version)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
		ON CONFLICT (key_hash) DO NOTHING`,
		c.orgs, c.ids, c.names, c.masked, c.hashes, c.created, c.expires, c.versions)
	return nil
}

func lookupRevoked(b *pgx.Batch, events []domain.Event) error {
	c, err := revoked(events)
	if err != nil {
		return err
	}
	b.Queue(`UPDATE key_lookup AS l SET revoked_at = u.at, version = u.version
		FROM unnest($1::bytea[], $2::timestamptz[], $3::bigint[]) AS u(key_hash, at, version)
		WHERE l.key_hash = u.key_hash AND l.version < u.version`,
		c.hashes, c.at, c.versions)
	return nil
}
