package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Lead runs work while this process is the one leader of name among all
// processes sharing the database, and returns when ctx ends.
//
// Leadership is a session-level advisory lock held on a dedicated connection,
// outside the pool. A candidate that does not hold it tries again every
// interval; a leader checks its connection every interval and, when the
// connection is gone (and with it the lock, which Postgres frees when the
// session ends), cancels work's context and competes again. So when a leader
// stops, crashes or loses its database, another candidate leads within about
// one interval. Work that returns an error gives up the lead, and this
// process competes again after an interval.
//
// Two leaders can overlap for at most the time a dead connection takes to be
// noticed; what work does must tolerate that (the relay's publications are
// deduplicated by message id, and its checkpoint only moves forward).
//
// onChange, if not nil, is told each time this process gains or loses the
// lead.
func Lead(ctx context.Context, pool *pgxpool.Pool, name string, interval time.Duration, log *slog.Logger,
	onChange func(leading bool), work func(ctx context.Context) error) {
	if onChange == nil {
		onChange = func(bool) {}
	}
	for ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
		if err != nil {
			log.Warn("leadership: cannot connect", "name", name, "err", err)
			sleep(ctx, interval)
			continue
		}
		leadWhileConnected(ctx, conn, name, interval, log, onChange, work)
		closeCtx, cancel := context.WithTimeout(context.Background(), interval)
		_ = conn.Close(closeCtx)
		cancel()
	}
}

// leadWhileConnected campaigns and leads on one connection until it fails or
// ctx ends.
func leadWhileConnected(ctx context.Context, conn *pgx.Conn, name string, interval time.Duration, log *slog.Logger,
	onChange func(bool), work func(context.Context) error) {
	for ctx.Err() == nil {
		held, err := tryLock(ctx, conn, name, interval)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("leadership: lost the database connection", "name", name, "err", err)
			}
			return
		}
		if !held {
			sleep(ctx, interval)
			continue
		}
		log.Info("leadership: leading", "name", name)
		onChange(true)
		err = lead(ctx, conn, interval, work)
		onChange(false)
		if ctx.Err() == nil {
			log.Warn("leadership: stepped down", "name", name, "err", err)
		}
		if conn.IsClosed() || errors.Is(err, errConnLost) {
			return
		}
		unlockCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), interval)
		_, err = conn.Exec(unlockCtx, `SELECT pg_advisory_unlock_all()`)
		cancel()
		if err != nil || ctx.Err() != nil {
			return
		}
		sleep(ctx, interval)
	}
}

var errConnLost = errors.New("leadership connection lost")

// lead runs work until it returns, ctx ends or the connection fails.
func lead(ctx context.Context, conn *pgx.Conn, interval time.Duration, work func(context.Context) error) error {
	workCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- work(workCtx) }()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			if err == nil {
				err = errors.New("work returned")
			}
			return err
		case <-ctx.Done():
			cancel()
			<-done
			return ctx.Err()
		case <-t.C:
			pingCtx, cancelPing := context.WithTimeout(ctx, interval)
			err := conn.Ping(pingCtx)
			cancelPing()
			if err != nil && ctx.Err() == nil {
				cancel()
				<-done
				return fmt.Errorf("%w: %v", errConnLost, err)
			}
		}
	}
}

func tryLock(ctx context.Context, conn *pgx.Conn, name string, timeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var held bool
	err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, lockName(name)).Scan(&held)
	return held, err
}

func lockName(name string) string { return "keyledger.leader." + name }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
