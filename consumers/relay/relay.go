// Package relay publishes the ledger to NATS JetStream: every committed
// event, at least once, in ledger order, with Nats-Msg-Id set to the event
// id. The events table is the outbox; the relay's place in it is
// checkpointed in Postgres.
//
// One relay is active at a time among the service instances sharing a
// database (eventstore.Lead); another takes over within about a second of it
// stopping. The active relay wakes when events commit (eventstore Wakeups,
// fed by LISTEN/NOTIFY) and polls now and then besides.
//
// It is a watermill Router: a Subscriber over the ledger feeds a handler
// that sends each event through a pipelined JetStream publisher (pipeline.go:
// many events in flight at once, stored in order or not at all), behind the
// Retry and Recoverer middlewares, with watermill's Prometheus handler
// metrics; the Subscriber waits at the end of each batch until JetStream has
// stored all of it.
//
// watermill-sql's subscriber is not used to read the ledger, for two
// reasons. It reads its own table layout and keeps its offsets with SELECT
// ... FOR UPDATE inside a transaction that stays open while the handler
// runs: while NATS is down, that transaction (which holds an xid) would stay
// open for the whole outage and hold back the xid8 horizon, stalling every
// other reader of the ledger (the organization log, the sealer), and it
// would make a network call inside a database transaction, which DESIGN
// section 9 rules out. And it wakes only by polling (watermill #126), where
// the relay must wake on commit. The Subscriber here reads with
// eventstore.Tail, holds no transaction between reads, and checkpoints what
// it has published every 200 ms at most.
package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmprom "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// Config holds the relay's settings; the zero values take the defaults.
type Config struct {
	Notices notices.Config
	// Batch is how many events are read at once (default 500).
	Batch int
	// Poll is how often the relay looks for events when no commit woke it
	// (default 1 s).
	Poll time.Duration
	// Heartbeat is how often the relay says it is caught up (default 1 s).
	Heartbeat time.Duration
	// LeaderInterval is how often a standby relay tries to take the lead,
	// and a leader checks that it still holds it (default 1 s).
	LeaderInterval time.Duration
	// PublishTimeout bounds one publication's wait for JetStream's
	// acknowledgement (default 5 s).
	PublishTimeout time.Duration
	Logger         *slog.Logger
	Registerer     prometheus.Registerer
}

func (c Config) withDefaults() Config {
	c.Notices = c.Notices.WithDefaults()
	if c.Batch <= 0 {
		c.Batch = 500
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = time.Second
	}
	if c.LeaderInterval <= 0 {
		c.LeaderInterval = time.Second
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c
}

// Relay publishes one database's ledger to one stream.
type Relay struct {
	store   *eventstore.Store
	pool    *pgxpool.Pool
	nc      *nats.Conn
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	wm      wmprom.PrometheusMetricsBuilder
}

// New returns a relay of store's ledger to the stream of cfg.Notices on nc.
func New(store *eventstore.Store, nc *nats.Conn, cfg Config) (*Relay, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Notices.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Relay{store: store, pool: store.Pool(), nc: nc, cfg: cfg, log: cfg.Logger, metrics: m,
		wm: wmprom.NewPrometheusMetricsBuilder(cfg.Registerer, "keyledger", "relay")}, nil
}

// Run competes for the lead and relays while leading, until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	eventstore.Lead(ctx, r.pool, "relay."+r.cfg.Notices.Stream, r.cfg.LeaderInterval, r.log,
		func(leading bool) {
			if leading {
				r.metrics.leading.Set(1)
			} else {
				r.metrics.leading.Set(0)
			}
		}, r.lead)
}

// lead relays from the checkpoint until ctx ends or the relay fails.
func (r *Relay) lead(ctx context.Context) error {
	js, err := jsOf(r)
	if err != nil {
		return err
	}
	defer js.CleanupPublisher()
	pipe := newPipeline(js, r.cfg.Notices.Stream)
	if err := r.ensureStream(ctx, js, pipe); err != nil {
		return err
	}
	from, err := r.checkpoint(ctx)
	if err != nil {
		return err
	}
	logger := wmLogger(r.log)
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: r.cfg.PublishTimeout}, logger)
	if err != nil {
		return err
	}
	router.AddMiddleware(
		middleware.Retry{
			MaxRetries:      5,
			InitialInterval: 20 * time.Millisecond,
			MaxInterval:     time.Second,
			Multiplier:      2,
			Logger:          logger,
			OnRetryHook:     func(int, time.Duration) { r.metrics.retries.Inc() },
		}.Middleware,
		middleware.Recoverer,
	)
	// watermill's handler metrics, not its subscriber decorator: that one
	// hands each message on through a goroutine of its own and starts
	// another per message to wait for its acknowledgement, for a count that
	// keyledger_relay_published_total keeps already.
	router.AddMiddleware(r.wm.NewRouterMiddleware().Middleware)
	sub := &ledgerSubscriber{relay: r, js: js, pipe: pipe, from: from}
	router.AddConsumerHandler("relay", r.cfg.Notices.Stream, sub, func(msg *message.Message) error {
		subject := r.cfg.Notices.Subject(msg.Metadata.Get(metaOrg), msg.Metadata.Get(metaType))
		if err := pipe.Publish(subject, msg); err != nil {
			r.metrics.publishErrors.Inc()
			return err
		}
		return nil
	})
	r.log.Info("relay: publishing", "stream", r.cfg.Notices.Stream, "from", from.String())
	err = router.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("router stopped")
	}
	return err
}

// jsOf is a JetStream context on the relay's connection whose asynchronous
// publications fail after PublishTimeout, and of which a whole batch can be
// in flight at once.
func jsOf(r *Relay) (jetstream.JetStream, error) {
	return jetstream.New(r.nc, jetstream.WithPublishAsyncTimeout(r.cfg.PublishTimeout),
		jetstream.WithPublishAsyncMaxPending(r.cfg.Batch))
}

// ensureStream makes the stream, retrying while NATS is unreachable (the
// relay must not give up the lead because NATS is down), and tells pipe the
// stream's configuration.
func (r *Relay) ensureStream(ctx context.Context, js jetstream.JetStream, pipe *pipeline) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
		s, err := notices.EnsureStream(cctx, js, r.cfg.Notices)
		cancel()
		if err == nil {
			pipe.follow(s.CachedInfo().Config)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.metrics.publishErrors.Inc()
		r.log.Warn("relay: cannot make the stream yet", "stream", r.cfg.Notices.Stream, "err", err)
		if !sleep(ctx, r.cfg.Poll) {
			return ctx.Err()
		}
	}
}

// wmLogger logs watermill's lifecycle chatter (handlers added, started) at
// debug level; its warnings and errors stay what they are.
func wmLogger(log *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
}

// Metadata keys of a relayed message. NATSMarshaler sends them as headers,
// so a consumer can route a notice without reading its body.
const (
	metaOrg  = "Keyledger-Org"
	metaType = "Keyledger-Type"
)

func newMessage(e domain.Event) (*message.Message, error) {
	body, err := notices.Encode(e)
	if err != nil {
		return nil, err
	}
	msg := message.NewMessage(e.ID, body)
	msg.Metadata.Set(metaOrg, e.OrgID)
	msg.Metadata.Set(metaType, e.Type)
	return msg, nil
}

// checkpoint reads where the relay of this stream stopped.
func (r *Relay) checkpoint(ctx context.Context) (eventstore.Cursor, error) {
	var xid string
	var c eventstore.Cursor
	err := r.pool.QueryRow(ctx, `SELECT transaction_id::text, position FROM relay_checkpoints WHERE name = $1`,
		r.cfg.Notices.Stream).Scan(&xid, &c.Position)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return eventstore.Cursor{}, nil
		}
		return c, fmt.Errorf("relay checkpoint: %w", eventstore.Unavailable(err))
	}
	c.Xid, err = eventstore.ParseXid(xid)
	return c, err
}

// saveCheckpoint moves the checkpoint forward, never back: a relay that
// lost the lead without noticing yet cannot undo its successor's progress.
func (r *Relay) saveCheckpoint(ctx context.Context, c eventstore.Cursor) error {
	_, err := r.pool.Exec(ctx, `INSERT INTO relay_checkpoints (name, transaction_id, position)
		VALUES ($1, $2::text::xid8, $3)
		ON CONFLICT (name) DO UPDATE SET transaction_id = excluded.transaction_id,
			position = excluded.position, updated_at = now()
		WHERE (relay_checkpoints.transaction_id, relay_checkpoints.position) < (excluded.transaction_id, excluded.position)`,
		r.cfg.Notices.Stream, strconv.FormatUint(c.Xid, 10), c.Position)
	if err != nil {
		return fmt.Errorf("relay checkpoint: %w", eventstore.Unavailable(err))
	}
	return nil
}

// heartbeat tells followers that the stream holds, up to its last
// sequence, every event committed before asOf, and tells pipe the stream's
// configuration as it read it.
func (r *Relay) heartbeat(ctx context.Context, js jetstream.JetStream, pipe *pipeline, asOf time.Time) error {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	s, err := js.Stream(cctx, r.cfg.Notices.Stream)
	if err != nil {
		return err
	}
	pipe.follow(s.CachedInfo().Config)
	lag := max(time.Since(asOf), 0)
	body, err := json.Marshal(notices.Heartbeat{StreamSeq: s.CachedInfo().State.LastSeq, LagSeconds: lag.Seconds(),
		StreamCreated: s.CachedInfo().Created})
	if err != nil {
		return err
	}
	return r.nc.Publish(r.cfg.Notices.HeartbeatSubject(), body)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
