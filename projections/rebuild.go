package projections

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// rebuildBatch is how many events one apply step of a rebuild takes.
const rebuildBatch = 5000

// Rebuild empties the list and lookup views and replays the whole log into
// them, in one transaction: readers see the old views until it commits, and
// commands that append meanwhile wait for it, then apply on top. Then it
// vacuums them (see vacuum).
// progress, if not nil, is called after each batch with the number of events
// replayed so far.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, progress func(events int)) error {
	if err := replay(ctx, pool, progress); err != nil {
		return err
	}
	if err := vacuum(ctx, pool, ""); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	return nil
}

// replay is Rebuild's transaction.
func replay(ctx context.Context, pool *pgxpool.Pool, progress func(events int)) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `TRUNCATE key_list, key_lookup`); err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
		var after int64
		total := 0
		for {
			events, err := eventstore.ReadAll(ctx, tx, after, rebuildBatch)
			if err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
			if len(events) == 0 {
				return nil
			}
			if err := applyAll(ctx, tx, events); err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
			after = events[len(events)-1].Position
			total += len(events)
			if progress != nil {
				progress(total)
			}
		}
	})
}

// applyAll applies events to both views through tx, in one round trip, with
// the projectors replaying (idempotent).
func applyAll(ctx context.Context, tx pgx.Tx, events []domain.Event) error {
	b := &pgx.Batch{}
	for _, p := range []eventstore.Projector{KeyList{Replay: true}, KeyLookup{Replay: true}} {
		if err := p.Queue(b, events); err != nil {
			return err
		}
	}
	return tx.SendBatch(ctx, b).Close()
}
