package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyledger/keyledger/consumers/keycache"
	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
)

// Defaults of Config.
const (
	DefaultStaleAfter    = 5 * time.Second
	DefaultLookupTimeout = 2 * time.Second
)

// ErrUnavailable is in the chain of every error Verify returns: the key
// could not be checked, and the caller must refuse it. Its domain code is
// domain.EUnavailable.
var ErrUnavailable = &domain.Error{Code: domain.EUnavailable, Message: "the key cannot be checked now: the keyledger service did not answer"}

// Config configures a Client. ServiceURL and one of NATS or NATSURL are
// required.
type Config struct {
	// ServiceURL is the keyledger service's base URL, such as
	// http://keyledger:8080; Verify asks its /v1/verify on a miss.
	ServiceURL string
	// NATS is the connection notices are read from. If nil, New connects
	// to NATSURL (reconnecting for ever) and Close closes that connection.
	NATS    *nats.Conn
	NATSURL string
	// Notices names the stream and subjects (defaults of DESIGN section 5).
	Notices notices.Config
	// StaleAfter is how long cached positives are trusted after the client
	// was last known current (default 5 s).
	StaleAfter time.Duration
	// KeyPrefix is the prefix of the ledger's keys (default "kl").
	KeyPrefix string
	// LookupTimeout bounds one call to the service (default 2 s).
	LookupTimeout time.Duration
	// MaxEntries bounds the cached positives (keycache default if zero).
	MaxEntries int
	// HTTPClient calls the service (default: one with a pool of
	// keep-alive connections sized for a gateway).
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Registerer, if set, receives the client's and its cache's metrics.
	Registerer prometheus.Registerer
	// Now is the clock expiry is judged by (default time.Now).
	Now func() time.Time
}

// Client verifies keys from the cache, asking the service on a miss. It is
// safe for concurrent use.
type Client struct {
	cfg       Config
	prefix    string
	verifyURL string
	http      *http.Client
	log       *slog.Logger
	now       func() time.Time
	nc        *nats.Conn
	ownNC     bool
	cache     *keycache.Cache
	follower  *notices.Follower
	metrics   *metrics
}

// New builds a client. It does not follow the notices until Run.
func New(cfg Config) (*Client, error) {
	cfg.Notices = cfg.Notices.WithDefaults()
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.KeyPrefix == "" {
		cfg.KeyPrefix = domain.DefaultKeyPrefix
	}
	if cfg.LookupTimeout == 0 {
		cfg.LookupTimeout = DefaultLookupTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:       cfg,
		prefix:    cfg.KeyPrefix,
		verifyURL: strings.TrimSuffix(cfg.ServiceURL, "/") + "/v1/verify",
		http:      cfg.HTTPClient,
		log:       cfg.Logger,
		now:       cfg.Now,
		nc:        cfg.NATS,
	}
	if c.http == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns, t.MaxIdleConnsPerHost = 256, 256
		c.http = &http.Client{Transport: t}
	}
	c.metrics = newMetrics()
	var err error
	c.cache, err = keycache.New(c.Current, keycache.Options{MaxEntries: cfg.MaxEntries, Registerer: cfg.Registerer})
	if err != nil {
		return nil, fmt.Errorf("gateway: cache metrics: %w", err)
	}
	if c.nc == nil {
		c.nc, err = notices.Connect(cfg.NATSURL, "keyledger-gateway", c.log)
		if err != nil {
			return nil, err
		}
		c.ownNC = true
	}
	c.follower, err = notices.NewFollower(c.nc, cfg.Notices, c.cache, notices.FollowerOptions{
		Logger:     c.log,
		Registerer: cfg.Registerer,
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if cfg.Registerer != nil {
		if err := c.metrics.register(cfg.Registerer); err != nil {
			c.Close()
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
	}
	return c, nil
}

func (cfg Config) validate() error {
	var errs []error
	if u, err := url.Parse(cfg.ServiceURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("service URL %q: want an http or https base URL such as http://127.0.0.1:8080", cfg.ServiceURL))
	}
	if cfg.NATS == nil && cfg.NATSURL == "" {
		errs = append(errs, errors.New("NATS: give a connection or a URL"))
	}
	if err := cfg.Notices.Validate(); err != nil {
		errs = append(errs, err)
	}
	if cfg.StaleAfter < 0 {
		errs = append(errs, fmt.Errorf("stale after %s: must be positive", cfg.StaleAfter))
	}
	if cfg.LookupTimeout < 0 {
		errs = append(errs, fmt.Errorf("lookup timeout %s: must be positive", cfg.LookupTimeout))
	}
	if !domain.ValidKeyPrefix(cfg.KeyPrefix) {
		errs = append(errs, fmt.Errorf("key prefix %q: want a lowercase letter, then up to 15 lowercase letters or digits", cfg.KeyPrefix))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	return nil
}

// Run follows the notices until ctx ends. It returns an error only when it
// cannot start; once following, it recovers from disconnects by itself.
func (c *Client) Run(ctx context.Context) error { return c.follower.Run(ctx) }

// Ready is closed once Run follows the notices: from then on no notice is
// missed, and answers from the service are cached. Serve after it.
func (c *Client) Ready() <-chan struct{} { return c.follower.Started() }

// Current reports whether cached positives are trusted: whether the client
// was known current within StaleAfter.
func (c *Client) Current() bool { return c.follower.CurrentWithin(c.cfg.StaleAfter) }

// Staleness is how long ago the client was last known current (since New
// if never).
func (c *Client) Staleness() time.Duration { return c.follower.Staleness() }

// AppliedCount is how many notices the client's follower has gone past
// since Run started (its cache reads the revocations among them).
func (c *Client) AppliedCount() uint64 { return c.follower.AppliedCount() }

// Cache is the client's cache, for inspection.
func (c *Client) Cache() *keycache.Cache { return c.cache }

// Close closes the NATS connection if New opened it. Stop Run first.
func (c *Client) Close() {
	if c.ownNC && c.nc != nil {
		c.nc.Close()
	}
}

// Verify checks a presented key against an organization, with the rules
// and reasons of domain.Verify. It returns an error (in whose chain is
// ErrUnavailable) beside an invalid Verification when the answer needed the
// service and the service did not give one.
func (c *Client) Verify(ctx context.Context, apiKey, orgID string) (domain.Verification, error) {
	if apiKey == "" || orgID == "" {
		return c.refuse(domain.ReasonMissing), nil
	}
	if !domain.ValidOrgID(orgID) {
		return c.refuse(domain.ReasonMalformed), nil
	}
	// The cache is asked before the key's format is checked: a digest found
	// there is a stored key's, so the key is well-formed, and a hit skips
	// the checksum (a third of a hit's time). A malformed key is never
	// found, and is refused below without a call to the service.
	h := domain.HashKey(apiKey)
	if k, ok := c.cache.Get(h); ok {
		return c.decide(k, orgID, c.now()), nil
	}
	if !domain.CheckKeyFormat(c.prefix, apiKey) {
		return c.refuse(domain.ReasonMalformed), nil
	}
	return c.ask(ctx, h, apiKey, orgID)
}

// decide applies the domain's rules to a key known for the digest.
func (c *Client) decide(k *domain.Key, orgID string, now time.Time) domain.Verification {
	v := k.Verdict(orgID, now)
	if !v.Valid() {
		return c.refuse(v.Reason)
	}
	c.metrics.results[resultValid].Inc()
	return v
}

func (c *Client) refuse(r domain.Reason) domain.Verification {
	c.metrics.results[resultIndex(r)].Inc()
	return domain.Verification{Reason: r}
}

// verifyAnswer is the service's 200 answer.
type verifyAnswer struct {
	Valid     bool    `json:"valid"`
	KeyID     string  `json:"key_id"`
	OrgID     string  `json:"org_id"`
	Name      string  `json:"name"`
	Status    string  `json:"status"`
	ExpiresAt *string `json:"expires_at"`
}

// ask checks a key with the service, reading the database directly
// (Cache-Control: no-cache), and caches what may be cached.
func (c *Client) ask(ctx context.Context, h domain.KeyHash, apiKey, orgID string) (domain.Verification, error) {
	// Read before the call: an answer is cached as a positive only if the
	// follower was already subscribed (nothing later is missed) and no gap
	// happened during the call.
	fillable := c.ready()
	gen := c.cache.Generation()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.LookupTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.verifyURL, nil)
	if err != nil {
		return c.unavailable(err)
	}
	req.Header.Set("X-Api-Key", apiKey)
	req.Header.Set("X-Organization-Id", orgID)
	req.Header.Set("Cache-Control", "no-cache")
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unavailable(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return c.unavailable(err)
	}
	now := c.now()
	switch resp.StatusCode {
	case http.StatusOK:
		var a verifyAnswer
		if err := json.Unmarshal(body, &a); err != nil || !a.Valid || a.KeyID == "" || a.OrgID != orgID {
			return c.unavailable(fmt.Errorf("unexpected answer from %s: %.200s", c.verifyURL, body))
		}
		k := &domain.Key{ID: a.KeyID, OrgID: a.OrgID, Name: a.Name, Hash: h}
		if a.ExpiresAt != nil {
			t, err := time.Parse(time.RFC3339Nano, *a.ExpiresAt)
			if err != nil {
				return c.unavailable(fmt.Errorf("unexpected expires_at from %s: %q", c.verifyURL, *a.ExpiresAt))
			}
			k.ExpiresAt = &t
		}
		if fillable {
			k = c.cache.FillAt(gen, h, k) // the tombstone, if a revocation won the race
		}
		return c.decide(k, orgID, now), nil
	case http.StatusUnauthorized:
		var p struct {
			Reason domain.Reason `json:"reason"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return c.unavailable(fmt.Errorf("unexpected 401 from %s: %.200s", c.verifyURL, body))
		}
		switch p.Reason {
		case domain.ReasonRevoked:
			// Revocation is permanent: a tombstone is safe to keep at any
			// time. The service only says revoked for the key's own
			// organization.
			c.cache.FillAt(gen, h, &domain.Key{OrgID: orgID, Hash: h, RevokedAt: &now})
			return c.refuse(domain.ReasonRevoked), nil
		case domain.ReasonMissing, domain.ReasonMalformed, domain.ReasonInvalid, domain.ReasonExpired:
			return c.refuse(p.Reason), nil
		}
		return c.unavailable(fmt.Errorf("unknown reason %q from %s", p.Reason, c.verifyURL))
	}
	return c.unavailable(fmt.Errorf("%s answered %s", c.verifyURL, resp.Status))
}

func (c *Client) ready() bool {
	select {
	case <-c.follower.Started():
		return true
	default:
		return false
	}
}

// unavailable fails closed: an error, and a Verification that is not valid.
func (c *Client) unavailable(cause error) (domain.Verification, error) {
	c.metrics.serviceErrors.Inc()
	c.metrics.results[resultError].Inc()
	return domain.Verification{}, fmt.Errorf("%w: %w", ErrUnavailable, cause)
}
