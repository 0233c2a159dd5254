package projections

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// RebuildAsideWith is RebuildAside replaying batch events per step, its
// swap waiting lockTimeout for the views' locks.
func RebuildAsideWith(ctx context.Context, pool *pgxpool.Pool, batch int, lockTimeout time.Duration, progress func(int)) error {
	return rebuildAside(ctx, pool, asideOptions{batch: batch, lockTimeout: lockTimeout}, progress)
}

// LateEvents is the statement the swap selects the events committed after
// the replay's snapshot with.
const LateEvents = lateEvents
