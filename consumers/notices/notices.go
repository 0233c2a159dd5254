// Package notices is the wire between keyledger's relay and the caches that
// follow it: the JetStream stream and subjects of DESIGN section 5, the
// relay's heartbeat, and a Follower that applies the stream's notices in
// order.
//
// Notices are the event envelopes of the ledger (domain.Event as JSON), one
// message per event, on <prefix>.<org_id>.<event type>, with Nats-Msg-Id set
// to the event id so that JetStream drops a republished duplicate within its
// duplicate window. Postgres stays the source of truth: the stream can be
// refilled from the ledger at any time (keyledger notices republish).
package notices

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyledger/keyledger/domain"
)

// Defaults of DESIGN section 5.
const (
	DefaultPrefix = "keyledger"
	DefaultStream = "KEYLEDGER"
	// DefaultDuplicateWindow is how long JetStream remembers message ids.
	// A relay that crashed between publishing and checkpointing republishes
	// at most what it published since its last checkpoint, well within it;
	// a consumer drops any older duplicate by the key's stream version.
	DefaultDuplicateWindow = 10 * time.Minute
)

var (
	prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	streamPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// Config names a deployment's notices: its subject prefix and stream. Tests
// and several deployments can share one NATS server by choosing their own.
type Config struct {
	Prefix          string
	Stream          string
	DuplicateWindow time.Duration
}

// WithDefaults fills the zero fields with the defaults.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	return c
}

// Validate reports a prefix or stream name that NATS would refuse.
func (c Config) Validate() error {
	var errs []error
	if !prefixPattern.MatchString(c.Prefix) {
		errs = append(errs, fmt.Errorf("subject prefix %q: want dot-separated tokens of letters, digits, _ and -", c.Prefix))
	}
	if !streamPattern.MatchString(c.Stream) {
		errs = append(errs, fmt.Errorf("stream name %q: want 1 to 64 letters, digits, _ and -", c.Stream))
	}
	if c.DuplicateWindow < 0 {
		errs = append(errs, fmt.Errorf("duplicate window %s: must not be negative", c.DuplicateWindow))
	}
	return errors.Join(errs...)
}

// Subject is where an event of the given type of an organization is
// published. Organization ids cannot hold a dot or a wildcard, so each is one
// subject token.
func (c Config) Subject(orgID, eventType string) string {
	return c.Prefix + "." + orgID + "." + eventType
}

// Subjects is the stream's subject filter.
func (c Config) Subjects() string { return c.Prefix + ".>" }

// HeartbeatSubject is the core NATS subject of the relay's heartbeat. It is
// outside the stream's subjects: heartbeats are not kept.
func (c Config) HeartbeatSubject() string { return "_" + c.Prefix + ".heartbeat" }

// EnsureStream creates the stream, file-backed so that notices outlive a
// NATS restart, if it does not exist. An existing stream keeps the settings
// an operator gave it (replicas, limits, age); only its subjects and
// duplicate window are set to keyledger's, if they differ.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, c.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        c.Stream,
			Description: "keyledger notices: every committed ledger event, in ledger order",
			Subjects:    []string{c.Subjects()},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Duplicates:  c.DuplicateWindow,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", c.Stream, err)
	}
	cfg := s.CachedInfo().Config
	if !slices.Contains(cfg.Subjects, c.Subjects()) || cfg.Duplicates != c.DuplicateWindow {
		if !slices.Contains(cfg.Subjects, c.Subjects()) {
			cfg.Subjects = append(cfg.Subjects, c.Subjects())
		}
		cfg.Duplicates = c.DuplicateWindow
		if s, err = js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("stream %s: %w", c.Stream, err)
		}
	}
	return s, nil
}

// Heartbeat is what the active relay announces about once a second: the
// stream holds, up to sequence StreamSeq, every event whose command returned
// more than Lag before the heartbeat was sent. Lag is zero when the relay has
// published everything committed; it is the age of the oldest event not yet
// published otherwise. A follower that has applied up to StreamSeq is
// therefore current as of the moment it heard the heartbeat, less Lag.
//
// StreamCreated names the stream's incarnation: a stream deleted and made
// again numbers its messages from 1, and a follower of the old one must start
// over rather than wait for sequences it believes it has applied.
type Heartbeat struct {
	StreamSeq     uint64    `json:"stream_seq"`
	LagSeconds    float64   `json:"lag_seconds"`
	StreamCreated time.Time `json:"stream_created"`
}

// Lag returns LagSeconds as a duration.
func (h Heartbeat) Lag() time.Duration { return time.Duration(h.LagSeconds * float64(time.Second)) }

// Encode returns a notice's message body: the event's JSON envelope. It
// calls MarshalJSON itself: json.Marshal would compact its (already
// compact) output once more.
func Encode(e domain.Event) ([]byte, error) { return e.MarshalJSON() }

// Decode reads a notice's message body.
func Decode(body []byte) (domain.Event, error) {
	var e domain.Event
	if err := json.Unmarshal(body, &e); err != nil {
		return domain.Event{}, fmt.Errorf("notice: %w", err)
	}
	return e, nil
}
