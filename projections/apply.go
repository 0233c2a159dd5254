package projections

import (
	"context"
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

// Apply applies events in ledger order, one statement per run of events of
// one type: within such a run no two events touch one key in a way whose
// order matters, and a rebuild applies thousands of events per statement.
// Every step is guarded by the key's version, so a replayed event changes
// nothing.
func (KeyList) Apply(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	return applyRuns(ctx, tx, events, map[string]func(context.Context, pgx.Tx, []domain.Event) error{
		domain.TypeKeyGenerated: listGenerated,
		domain.TypeKeyRevoked:   listRevoked,
	})
}

// Apply applies events to the lookup view; see KeyList.Apply.
func (KeyLookup) Apply(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	return applyRuns(ctx, tx, events, map[string]func(context.Context, pgx.Tx, []domain.Event) error{
		domain.TypeKeyGenerated: lookupGenerated,
		domain.TypeKeyRevoked:   lookupRevoked,
	})
}

func applyRuns(ctx context.Context, tx pgx.Tx, events []domain.Event, steps map[string]func(context.Context, pgx.Tx, []domain.Event) error) error {
	for start := 0; start < len(events); {
		end := start + 1
		for end < len(events) && events[end].Type == events[start].Type {
			end++
		}
		step, ok := steps[events[start].Type]
		if !ok {
			return fmt.Errorf("projection: no apply step for %q", events[start].Type)
		}
		if err := step(ctx, tx, events[start:end]); err != nil {
			return fmt.Errorf("apply %s: %w", events[start].Type, err)
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

func listGenerated(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	c, err := generated(events)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO key_list (org_id, key_id, name, masked, key_hash, created_at, expires_at, version)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
		ON CONFLICT (org_id, key_id) DO NOTHING`,
		c.orgs, c.ids, c.names, c.masked, c.hashes, c.created, c.expires, c.versions)
	return err
}

func listRevoked(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	c, err := revoked(events)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE key_list AS l SET revoked_at = u.at, revoke_reason = u.reason, version = u.version
		FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[]) AS u(org_id, key_id, at, reason, version)
		WHERE l.org_id = u.org_id AND l.key_id = u.key_id AND l.version < u.version`,
		c.orgs, c.ids, c.at, c.reasons, c.versions)
	return err
}

func lookupGenerated(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	c, err := generated(events)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO key_lookup (org_id, key_id, name, masked, key_hash, created_at, expires_at, version)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
		ON CONFLICT (key_hash) DO NOTHING`,
		c.orgs, c.ids, c.names, c.masked, c.hashes, c.created, c.expires, c.versions)
	return err
}

func lookupRevoked(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	c, err := revoked(events)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE key_lookup AS l SET revoked_at = u.at, version = u.version
		FROM unnest($1::bytea[], $2::timestamptz[], $3::bigint[]) AS u(key_hash, at, version)
		WHERE l.key_hash = u.key_hash AND l.version < u.version`,
		c.hashes, c.at, c.versions)
	return err
}
