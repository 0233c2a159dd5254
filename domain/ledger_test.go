package domain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// memStore is an in-memory EventStore: a fake of the domain's own
// interface, with the same rules as the Postgres one (expected version,
// idempotency records within a window), so that the Ledger's load, decide,
// append logic can be tested without a database. The Postgres store is
// tested against Postgres in eventstore/.
type memStore struct {
	mu       sync.Mutex
	now      func() time.Time
	streams  map[string][]Event // by org + "/" + key id
	idem     map[string]memIdem // by org + "/" + idempotency key
	position int64

	appendCalls int
	loadCalls   int
	// beforeAppend, when set, runs (without the lock held) at the start of
	// each Append, numbered from 1. A non-nil error is returned instead of
	// appending: it simulates a concurrent writer that won a race.
	beforeAppend func(call int, events []Event) error
	// lookupErr, when set, is returned by LookupIdempotency.
	lookupErr error
}

type memIdem struct {
	rec IdempotencyRecord
	at  time.Time
}

func newMemStore(now func() time.Time) *memStore {
	return &memStore{now: now, streams: map[string][]Event{}, idem: map[string]memIdem{}}
}

func (s *memStore) Load(_ context.Context, orgID, keyID string) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadCalls++
	return slices.Clone(s.streams[orgID+"/"+keyID]), nil
}

func (s *memStore) Append(_ context.Context, expected int64, events []Event, idem *IdempotencyRecord) ([]Event, error) {
	s.mu.Lock()
	s.appendCalls++
	call := s.appendCalls
	hook := s.beforeAppend
	s.mu.Unlock()
	if hook != nil {
		if err := hook(call, events); err != nil {
			return nil, err
		}
	}
	return s.commit(expected, events, idem)
}

// commit is Append without the hook; tests also use it to play the part of
// a concurrent writer.
func (s *memStore) commit(expected int64, events []Event, idem *IdempotencyRecord) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(events) == 0 {
		return nil, errors.New("memStore: append of no events")
	}
	stream := events[0].OrgID + "/" + events[0].KeyID
	if int64(len(s.streams[stream])) != expected {
		return nil, ErrConflict
	}
	if idem != nil {
		k := idem.OrgID + "/" + idem.Key
		if old, ok := s.idem[k]; ok && !old.at.Before(s.now().Add(-IdempotencyWindow)) {
			return nil, ErrIdempotencyTaken
		}
	}
	out := make([]Event, len(events))
	for i, e := range events {
		if e.StreamVersion != expected+int64(i)+1 {
			return nil, fmt.Errorf("memStore: event %d has version %d after %d", i, e.StreamVersion, expected)
		}
		if e.OrgID+"/"+e.KeyID != stream {
			return nil, errors.New("memStore: events of several streams in one append")
		}
		s.position++
		e.Position = s.position
		out[i] = e
	}
	s.streams[stream] = append(s.streams[stream], out...)
	if idem != nil {
		s.idem[idem.OrgID+"/"+idem.Key] = memIdem{rec: *idem, at: s.now()}
	}
	return out, nil
}

func (s *memStore) LookupIdempotency(_ context.Context, orgID, key string, since time.Time) (IdempotencyRecord, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lookupErr != nil {
		return IdempotencyRecord{}, false, s.lookupErr
	}
	r, ok := s.idem[orgID+"/"+key]
	if !ok || r.at.Before(since) {
		return IdempotencyRecord{}, false, nil
	}
	return r.rec, true, nil
}

// all returns every committed event, in position order.
func (s *memStore) all() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Event
	for _, events := range s.streams {
		out = append(out, events...)
	}
	slices.SortFunc(out, func(a, b Event) int { return int(a.Position - b.Position) })
	return out
}

// clock is an injected, advanceable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type ledgerBundle struct {
	ledger *Ledger
	store  *memStore
	clock  *clock
}

func setupLedger(t *testing.T) ledgerBundle {
	t.Helper()
	c := &clock{t: testNow}
	store := newMemStore(c.Now)
	return ledgerBundle{
		ledger: &Ledger{Store: store, KeyPrefix: DefaultKeyPrefix, Now: c.Now},
		store:  store,
		clock:  c,
	}
}

func genCmd(name string) GenerateKey {
	return GenerateKey{OrgID: testOrg, Name: name, Actor: testActor}
}

// TestLedgerGenerateReturnsTheSecretOnceAndStoresOnlyItsDigest protects
// "no secret at rest": the plaintext is in the answer, its digest and masked
// form are in the event, and no event field holds the plaintext.
func TestLedgerGenerateReturnsTheSecretOnceAndStoresOnlyItsDigest(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := context.Background()

	expires := testNow.Add(30 * 24 * time.Hour)
	cmd := GenerateKey{OrgID: testOrg, Name: "production-key", ExpiresAt: &expires, Actor: testActor}
	g, err := b.ledger.GenerateKey(ctx, cmd, "")
	require.NoError(t, err)

	require.False(t, g.Replayed)
	require.True(t, CheckKeyFormat(DefaultKeyPrefix, g.Secret), g.Secret)
	require.True(t, ValidKeyID(g.Key.ID), g.Key.ID)
	require.Equal(t, testOrg, g.Key.OrgID)
	require.Equal(t, "production-key", g.Key.Name)
	require.Equal(t, wantMasked(g.Secret), g.Key.Masked)
	require.True(t, g.Key.Hash.Equal(HashKey(g.Secret)))
	require.Equal(t, testNow, g.Key.CreatedAt)
	require.Equal(t, &expires, g.Key.ExpiresAt)
	require.Equal(t, StatusActive, g.Key.Status(testNow))
	require.Equal(t, int64(1), g.Key.Version)

	events := b.store.all()
	require.Len(t, events, 1)
	e := events[0]
	require.Equal(t, TypeKeyGenerated, e.Type)
	require.Equal(t, g.Key.ID, e.KeyID)
	require.Equal(t, testActor, e.Actor)
	require.Equal(t, wantHash(g.Secret), e.Data.(KeyGenerated).KeyHash)

	wire, err := json.Marshal(e)
	require.NoError(t, err)
	requireNoSecret(t, string(wire), g.Secret)
	requireNoSecret(t, fmt.Sprintf("%+v %#v", e, e), g.Secret)

	// The key folded from the store is the key that was returned.
	loaded, err := b.store.Load(ctx, testOrg, g.Key.ID)
	require.NoError(t, err)
	require.Equal(t, state(g.Key), state(KeyFromEvents(loaded)))
}

// TestLedgerGenerateUsesTheConfiguredPrefix protects KEYLEDGER_KEY_PREFIX.
func TestLedgerGenerateUsesTheConfiguredPrefix(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	b.ledger.KeyPrefix = "acme"

	g, err := b.ledger.GenerateKey(context.Background(), genCmd("k"), "")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(g.Secret, "acme_"), g.Secret)
	require.True(t, CheckKeyFormat("acme", g.Secret))
}

// TestLedgerGenerateRefusesBadInputWithoutWriting protects "never a partial
// write": a refused command appends nothing and writes no idempotency
// record.
func TestLedgerGenerateRefusesBadInputWithoutWriting(t *testing.T) {
	t.Parallel()

	cases := []struct {
		name    string
		cmd     GenerateKey
		idemKey string
	}{
		{"empty name", GenerateKey{OrgID: testOrg, Name: ""}, ""},
		{"name over 100 characters", GenerateKey{OrgID: testOrg, Name: strings.Repeat("n", 101)}, ""},
		{"expiry in the past", GenerateKey{OrgID: testOrg, Name: "k", ExpiresAt: timePtr(testNow.Add(-time.Minute))}, ""},
		{"bad org id", GenerateKey{OrgID: "org acme", Name: "k"}, ""},
		{"idempotency key over 255 characters", genCmd("k"), strings.Repeat("i", 256)},
		{"idempotency key with a control character", genCmd("k"), "abc\ndef"},
		{"idempotency key with non-ASCII", genCmd("k"), "clé"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupLedger(t)

			g, err := b.ledger.GenerateKey(context.Background(), tc.cmd, tc.idemKey)
			require.Error(t, err)
			require.Equal(t, EInvalid, ErrorCode(err), "error: %v", err)
			require.Empty(t, g.Secret)
			require.Empty(t, b.store.all())
			require.Empty(t, b.store.idem)
			require.Zero(t, b.store.appendCalls)
		})
	}

	t.Run("idempotency key of exactly 255 printable characters is accepted", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		_, err := b.ledger.GenerateKey(context.Background(), genCmd("k"), strings.Repeat("~", 255))
		require.NoError(t, err)
	})
}

// TestLedgerGenerateRetryWithSameIdempotencyKeyCreatesNoSecondKey protects
// the Idempotency-Key contract: a retry gets the same key, marked replayed,
// without the plaintext (which is never stored), and nothing is appended.
func TestLedgerGenerateRetryWithSameIdempotencyKeyCreatesNoSecondKey(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := context.Background()

	expires := testNow.Add(90 * 24 * time.Hour)
	cmd := GenerateKey{OrgID: testOrg, Name: "production-key", ExpiresAt: &expires, Actor: testActor}
	first, err := b.ledger.GenerateKey(ctx, cmd, "req-123")
	require.NoError(t, err)
	require.NotEmpty(t, first.Secret)
	require.False(t, first.Replayed)

	b.clock.Advance(IdempotencyWindow - time.Second)
	retry := cmd
	retry.Actor = "someone-else@example.com" // who retries does not change what was asked
	second, err := b.ledger.GenerateKey(ctx, retry, "req-123")
	require.NoError(t, err)
	require.True(t, second.Replayed)
	require.Empty(t, second.Secret, "the plaintext is returned only once")
	require.Equal(t, state(first.Key), state(second.Key))

	require.Len(t, b.store.all(), 1, "the retry appends nothing")
	require.Equal(t, 1, b.store.appendCalls)
}

// TestLedgerRetryWritingTheExpiryInAnotherZoneIsTheSameRequest: an expiry is
// an instant, whatever zone the client writes it in.
func TestLedgerRetryWritingTheExpiryInAnotherZoneIsTheSameRequest(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := context.Background()
	expires := testNow.Add(90 * 24 * time.Hour).UTC()
	_, err := b.ledger.GenerateKey(ctx, GenerateKey{OrgID: testOrg, Name: "k", ExpiresAt: &expires}, "req-zone")
	require.NoError(t, err)
	inParis := expires.In(time.FixedZone("CET", 3600))
	again, err := b.ledger.GenerateKey(ctx, GenerateKey{OrgID: testOrg, Name: "k", ExpiresAt: &inParis}, "req-zone")
	require.NoError(t, err)
	require.True(t, again.Replayed)
	require.Len(t, b.store.all(), 1)
}

// TestLedgerGenerateIdempotencyKeyReusedWithAnotherBodyIsMismatch protects
// clients from getting a key they did not ask for.
func TestLedgerGenerateIdempotencyKeyReusedWithAnotherBodyIsMismatch(t *testing.T) {
	t.Parallel()

	in30d := testNow.Add(30 * 24 * time.Hour)
	in60d := testNow.Add(60 * 24 * time.Hour)
	first := GenerateKey{OrgID: testOrg, Name: "production-key", ExpiresAt: &in30d}
	cases := map[string]GenerateKey{
		"another name":         {OrgID: testOrg, Name: "staging-key", ExpiresAt: &in30d},
		"another expiry":       {OrgID: testOrg, Name: "production-key", ExpiresAt: &in60d},
		"no expiry instead":    {OrgID: testOrg, Name: "production-key"},
		"name differs by case": {OrgID: testOrg, Name: "Production-key", ExpiresAt: &in30d},
	}
	for name, other := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupLedger(t)
			ctx := context.Background()

			_, err := b.ledger.GenerateKey(ctx, first, "req-123")
			require.NoError(t, err)

			g, err := b.ledger.GenerateKey(ctx, other, "req-123")
			require.Error(t, err)
			require.Equal(t, EMismatch, ErrorCode(err), "error: %v", err)
			require.Nil(t, g.Key)
			require.Empty(t, g.Secret)
			require.Len(t, b.store.all(), 1, "a mismatch appends nothing")
		})
	}
}

// TestLedgerIdempotencyKeysAreScopedAndExpire protects tenant isolation of
// Idempotency-Keys and the 24 h window.
func TestLedgerIdempotencyKeysAreScopedAndExpire(t *testing.T) {
	t.Parallel()

	t.Run("the same idempotency key in another organization makes another key", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		ctx := context.Background()

		a, err := b.ledger.GenerateKey(ctx, genCmd("k"), "req-1")
		require.NoError(t, err)
		other := genCmd("k")
		other.OrgID = otherOrg
		o, err := b.ledger.GenerateKey(ctx, other, "req-1")
		require.NoError(t, err)
		require.False(t, o.Replayed)
		require.NotEmpty(t, o.Secret)
		require.NotEqual(t, a.Key.ID, o.Key.ID)
		require.Equal(t, otherOrg, o.Key.OrgID)
	})

	t.Run("after the window the idempotency key makes a new key", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		ctx := context.Background()

		a, err := b.ledger.GenerateKey(ctx, genCmd("k"), "req-1")
		require.NoError(t, err)
		b.clock.Advance(IdempotencyWindow + time.Nanosecond)
		n, err := b.ledger.GenerateKey(ctx, genCmd("k"), "req-1")
		require.NoError(t, err)
		require.False(t, n.Replayed)
		require.NotEqual(t, a.Key.ID, n.Key.ID)
	})

	t.Run("without an idempotency key every request makes a key", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		ctx := context.Background()

		a, err := b.ledger.GenerateKey(ctx, genCmd("k"), "")
		require.NoError(t, err)
		c, err := b.ledger.GenerateKey(ctx, genCmd("k"), "")
		require.NoError(t, err)
		require.NotEqual(t, a.Key.ID, c.Key.ID)
		require.NotEqual(t, a.Secret, c.Secret)
		require.Len(t, b.store.all(), 2)
	})
}

// TestLedgerGenerateLosingTheIdempotencyRaceReplaysTheWinner protects the
// race between two requests with one Idempotency-Key: the loser's Append
// gets ErrIdempotencyTaken, and it answers with the winner's key.
func TestLedgerGenerateLosingTheIdempotencyRaceReplaysTheWinner(t *testing.T) {
	t.Parallel()

	// winner commits, as a concurrent request would, a key for the given
	// command under the idempotency key, before the loser's Append.
	winner := func(t *testing.T, b ledgerBundle, cmd GenerateKey) *Key {
		t.Helper()
		k := &Key{}
		require.NoError(t, k.Generate(cmd, NewKeyID(), NewKeySecret(DefaultKeyPrefix), testNow))
		_, err := b.store.commit(0, k.Changes(), &IdempotencyRecord{OrgID: cmd.OrgID, Key: "req-9", RequestHash: requestHash(cmd), KeyID: k.ID})
		require.NoError(t, err)
		return k
	}

	t.Run("same request: the winner's key is replayed", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		var won *Key
		b.store.beforeAppend = func(call int, _ []Event) error {
			won = winner(t, b, genCmd("prod"))
			return ErrIdempotencyTaken
		}

		g, err := b.ledger.GenerateKey(context.Background(), genCmd("prod"), "req-9")
		require.NoError(t, err)
		require.True(t, g.Replayed)
		require.Empty(t, g.Secret, "the loser's secret is discarded, never returned")
		require.Equal(t, won.ID, g.Key.ID)
		require.Len(t, b.store.all(), 1, "only the winner's event is in the store")
	})

	t.Run("another request: mismatch", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		b.store.beforeAppend = func(call int, _ []Event) error {
			winner(t, b, genCmd("something else"))
			return ErrIdempotencyTaken
		}

		_, err := b.ledger.GenerateKey(context.Background(), genCmd("prod"), "req-9")
		require.Equal(t, EMismatch, ErrorCode(err), "error: %v", err)
		require.Len(t, b.store.all(), 1)
	})

	t.Run("taken but no record visible: conflict", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		b.store.beforeAppend = func(int, []Event) error { return ErrIdempotencyTaken }

		_, err := b.ledger.GenerateKey(context.Background(), genCmd("prod"), "req-9")
		require.Equal(t, EConflict, ErrorCode(err), "error: %v", err)
		require.Empty(t, b.store.all())
	})
}

// TestLedgerConcurrentRetriesWithOneIdempotencyKeyMakeOneKey runs real
// concurrent requests against the fake: exactly one key is created, exactly
// one answer carries the plaintext, and every answer names that key.
func TestLedgerConcurrentRetriesWithOneIdempotencyKeyMakeOneKey(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)

	const n = 16
	results := make([]Generated, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = b.ledger.GenerateKey(context.Background(), genCmd("prod"), "req-race")
		})
	}
	wg.Wait()

	require.Len(t, b.store.all(), 1)
	var secrets int
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, results[0].Key.ID, results[i].Key.ID)
		if results[i].Secret != "" {
			secrets++
			require.False(t, results[i].Replayed)
		}
	}
	require.Equal(t, 1, secrets, "the plaintext is returned exactly once")
}

// TestLedgerGeneratePassesStoreErrorsOn protects the error path: a failing
// store is never reported as success, and its error keeps its kind.
func TestLedgerGeneratePassesStoreErrorsOn(t *testing.T) {
	t.Parallel()

	down := Errorf(EUnavailable, "database unreachable")

	t.Run("append fails", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		b.store.beforeAppend = func(int, []Event) error { return down }
		g, err := b.ledger.GenerateKey(context.Background(), genCmd("k"), "")
		require.Equal(t, EUnavailable, ErrorCode(err))
		require.Empty(t, g.Secret, "no secret for a key that was not stored")
	})

	t.Run("idempotency lookup fails", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		b.store.lookupErr = down
		g, err := b.ledger.GenerateKey(context.Background(), genCmd("k"), "req-1")
		require.Equal(t, EUnavailable, ErrorCode(err))
		require.Empty(t, g.Secret)
		require.Zero(t, b.store.appendCalls)
	})
}

// seedKey stores a generated key in org and returns it.
func seedKey(t *testing.T, b ledgerBundle, org string) *Key {
	t.Helper()
	cmd := genCmd("prod")
	cmd.OrgID = org
	g, err := b.ledger.GenerateKey(context.Background(), cmd, "")
	require.NoError(t, err)
	return g.Key
}

// TestLedgerRevokeKey protects revocation through the ledger: an active key
// is revoked with one event; a revoked key is returned as it is with
// nothing appended; a key of another organization, or none, is not found.
func TestLedgerRevokeKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("revoke an active key appends one key.revoked", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		b.clock.Advance(time.Hour)

		got, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: "rotated", Actor: testActor})
		require.NoError(t, err)
		require.Equal(t, StatusRevoked, got.Status(b.clock.Now()))
		require.Equal(t, testNow.Add(time.Hour), *got.RevokedAt)
		require.Equal(t, "rotated", got.RevokeReason)
		require.Equal(t, int64(2), got.Version)

		events, err := b.store.Load(ctx, testOrg, k.ID)
		require.NoError(t, err)
		require.Len(t, events, 2)
		require.Equal(t, TypeKeyRevoked, events[1].Type)
		require.Equal(t, KeyRevoked{KeyID: k.ID, KeyHash: k.Hash.String(), Reason: "rotated"}, events[1].Data)
		require.Equal(t, testActor, events[1].Actor)
		require.Equal(t, state(got), state(KeyFromEvents(events)))
	})

	t.Run("revoke a revoked key appends nothing and returns it", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		first, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: "first"})
		require.NoError(t, err)
		calls := b.store.appendCalls

		b.clock.Advance(time.Hour)
		again, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: "second"})
		require.NoError(t, err)
		require.Equal(t, state(first), state(again), "the first revocation stands")
		require.Equal(t, calls, b.store.appendCalls, "nothing is appended")
		require.Len(t, b.store.all(), 2)
	})

	t.Run("revoke a key of another organization is not found and changes nothing", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)

		got, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: otherOrg, KeyID: k.ID})
		require.Equal(t, ENotFound, ErrorCode(err), "error: %v", err)
		require.Nil(t, got)
		require.Len(t, b.store.all(), 1)
	})

	t.Run("revoke a key that does not exist is not found", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		_, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: NewKeyID()})
		require.Equal(t, ENotFound, ErrorCode(err), "error: %v", err)
		require.Zero(t, b.store.appendCalls)
	})

	t.Run("revoke with a reason too long is refused before any load", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		loads := b.store.loadCalls
		_, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: strings.Repeat("r", 501)})
		require.Equal(t, EInvalid, ErrorCode(err))
		require.Equal(t, loads, b.store.loadCalls)
		require.Len(t, b.store.all(), 1)
	})
}

// TestLedgerRevokeRace protects guarantee 3 on the revoke path: a revoke
// that loses a race retries on a fresh load; when the winner already revoked
// the key, it answers with the revoked key and appends nothing.
func TestLedgerRevokeRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("conflict and the reload shows the key revoked: return it, append nothing", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		winnerAt := testNow.Add(time.Minute)
		b.store.beforeAppend = func(call int, _ []Event) error {
			if call == 2 { // call 1 was seedKey's generate
				w := KeyFromEvents(b.mustLoad(t, k.ID))
				require.NoError(t, w.Revoke(RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: "winner"}, winnerAt))
				_, err := b.store.commit(1, w.Changes(), nil)
				require.NoError(t, err)
				return ErrConflict
			}
			return nil
		}

		got, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: "loser"})
		require.NoError(t, err)
		require.Equal(t, StatusRevoked, got.Status(testNow))
		require.Equal(t, "winner", got.RevokeReason, "the winner's revocation is the one that stands")
		require.Equal(t, winnerAt, *got.RevokedAt)
		require.Empty(t, got.Changes(), "the loser recorded nothing")

		events := b.store.all()
		require.Len(t, events, 2, "one generate, one revoke: the winner's")
		require.Equal(t, 2, b.store.appendCalls, "the loser did not append after its reload")
	})

	t.Run("a transient conflict is retried and the revoke lands once", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		b.store.beforeAppend = func(call int, _ []Event) error {
			if call == 2 {
				return ErrConflict
			}
			return nil
		}

		got, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: "r"})
		require.NoError(t, err)
		require.Equal(t, StatusRevoked, got.Status(testNow))
		require.Len(t, b.store.all(), 2)
	})

	t.Run("a conflict that persists is reported as conflict after bounded retries", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		b.store.beforeAppend = func(call int, _ []Event) error { return ErrConflict }

		_, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID})
		require.ErrorIs(t, err, ErrConflict)
		require.Equal(t, EConflict, ErrorCode(err))
		require.Equal(t, 1+revokeAttempts, b.store.appendCalls)
		require.Len(t, b.store.all(), 1)
	})

	t.Run("another store error is not retried", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)
		b.store.beforeAppend = func(int, []Event) error { return errors.New("disk full") }

		_, err := b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID})
		require.Equal(t, EInternal, ErrorCode(err))
		require.Equal(t, 2, b.store.appendCalls)
	})

	t.Run("concurrent revokes of one key append exactly one event and all succeed", func(t *testing.T) {
		t.Parallel()
		b := setupLedger(t)
		k := seedKey(t, b, testOrg)

		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, errs[i] = b.ledger.RevokeKey(ctx, RevokeKey{OrgID: testOrg, KeyID: k.ID, Reason: fmt.Sprint("r", i)})
			})
		}
		wg.Wait()
		for _, err := range errs {
			// Only a revoke can append to this stream, so a loser's
			// conflict always means the key is revoked on its reload.
			require.NoError(t, err)
		}
		events := b.store.all()
		require.Len(t, events, 2, "exactly one key.revoked")
		require.Equal(t, TypeKeyRevoked, events[1].Type)
	})
}

func (b ledgerBundle) mustLoad(t *testing.T, keyID string) []Event {
	t.Helper()
	events, err := b.store.Load(context.Background(), testOrg, keyID)
	require.NoError(t, err)
	return events
}

// memLookup is an in-memory KeyLookup by digest, counting its calls.
type memLookup struct {
	mu    sync.Mutex
	keys  map[KeyHash]*Key
	calls int
	err   error
}

func (m *memLookup) LookupKey(_ context.Context, hash KeyHash) (*Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.err != nil {
		return nil, m.err
	}
	return m.keys[hash], nil
}

// TestVerify protects /v1/verify's answers: each failure reason, decided
// without a lookup where the input alone decides it, and a key of another
// organization answered exactly as an unknown key.
func TestVerify(t *testing.T) {
	t.Parallel()

	now := testNow
	keyAt := func(secret, org string, expires *time.Time, revoked bool) *Key {
		events := []Event{generatedEvent(org, secret, "prod", expires)}
		if revoked {
			events = append(events, revokedEvent(org, secret, "leaked", 2, now.Add(-time.Minute)))
		}
		return KeyFromEvents(withIDs(events...))
	}

	active := NewKeySecret(DefaultKeyPrefix)
	soon := NewKeySecret(DefaultKeyPrefix)
	expired := NewKeySecret(DefaultKeyPrefix)
	expiresNow := NewKeySecret(DefaultKeyPrefix)
	revoked := NewKeySecret(DefaultKeyPrefix)
	revokedAndExpired := NewKeySecret(DefaultKeyPrefix)
	unknown := NewKeySecret(DefaultKeyPrefix)
	mislabeled := NewKeySecret(DefaultKeyPrefix) // stored under another key's digest

	keys := map[KeyHash]*Key{
		HashKey(active):            keyAt(active, testOrg, nil, false),
		HashKey(soon):              keyAt(soon, testOrg, timePtr(now.Add(24*time.Hour)), false),
		HashKey(expired):           keyAt(expired, testOrg, timePtr(now.Add(-time.Hour)), false),
		HashKey(expiresNow):        keyAt(expiresNow, testOrg, timePtr(now), false),
		HashKey(revoked):           keyAt(revoked, testOrg, nil, true),
		HashKey(revokedAndExpired): keyAt(revokedAndExpired, testOrg, timePtr(now.Add(-time.Hour)), true),
		HashKey(mislabeled):        keyAt(active, testOrg, nil, false),
	}

	badChecksum := active[:len(active)-1] + string(testAlphabet[(strings.IndexByte(testAlphabet, active[len(active)-1])+1)%62])

	cases := []struct {
		name         string
		apiKey, org  string
		want         Reason
		wantStatus   Status
		wantNoLookup bool
	}{
		{name: "valid active key", apiKey: active, org: testOrg, wantStatus: StatusActive},
		{name: "valid key that expires soon", apiKey: soon, org: testOrg, wantStatus: StatusExpiresSoon},
		{name: "missing key", apiKey: "", org: testOrg, want: ReasonMissing, wantNoLookup: true},
		{name: "missing organization", apiKey: active, org: "", want: ReasonMissing, wantNoLookup: true},
		{name: "missing both", want: ReasonMissing, wantNoLookup: true},
		{name: "malformed: bad checksum", apiKey: badChecksum, org: testOrg, want: ReasonMalformed, wantNoLookup: true},
		{name: "malformed: wrong prefix", apiKey: "sk" + active[2:], org: testOrg, want: ReasonMalformed, wantNoLookup: true},
		{name: "malformed: truncated", apiKey: active[:20], org: testOrg, want: ReasonMalformed, wantNoLookup: true},
		{name: "malformed: garbage", apiKey: "Bearer hunter2", org: testOrg, want: ReasonMalformed, wantNoLookup: true},
		{name: "malformed: bad org id", apiKey: active, org: "org acme", want: ReasonMalformed, wantNoLookup: true},
		{name: "malformed: org id too long", apiKey: active, org: strings.Repeat("o", 65), want: ReasonMalformed, wantNoLookup: true},
		{name: "invalid: unknown key", apiKey: unknown, org: testOrg, want: ReasonInvalid},
		{name: "invalid: key of another organization", apiKey: active, org: otherOrg, want: ReasonInvalid},
		{name: "invalid: revoked key of another organization", apiKey: revoked, org: otherOrg, want: ReasonInvalid},
		{name: "invalid: lookup returns a key of another digest", apiKey: mislabeled, org: testOrg, want: ReasonInvalid},
		{name: "expired key", apiKey: expired, org: testOrg, want: ReasonExpired},
		{name: "key expiring exactly now is expired", apiKey: expiresNow, org: testOrg, want: ReasonExpired},
		{name: "revoked key", apiKey: revoked, org: testOrg, want: ReasonRevoked},
		{name: "revoked and expired key is revoked", apiKey: revokedAndExpired, org: testOrg, want: ReasonRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lookup := &memLookup{keys: keys}

			v, err := Verify(context.Background(), lookup, DefaultKeyPrefix, tc.apiKey, tc.org, now)
			require.NoError(t, err)
			require.Equal(t, tc.want, v.Reason)
			require.Equal(t, tc.want == "", v.Valid())
			if tc.wantNoLookup {
				require.Zero(t, lookup.calls, "decided from the input alone, without a lookup")
			}
			if tc.want != "" {
				require.Nil(t, v.Key, "a refused verification reveals no key")
				return
			}
			require.NotNil(t, v.Key)
			require.Equal(t, testOrg, v.Key.OrgID)
			require.Equal(t, tc.wantStatus, v.Key.Status(now))
			require.True(t, v.Key.Hash.Equal(HashKey(tc.apiKey)))
		})
	}

	t.Run("a failing lookup is an error, not a verdict", func(t *testing.T) {
		t.Parallel()
		lookup := &memLookup{err: Errorf(EUnavailable, "database unreachable")}
		v, err := Verify(context.Background(), lookup, DefaultKeyPrefix, active, testOrg, now)
		require.Equal(t, EUnavailable, ErrorCode(err))
		require.Nil(t, v.Key, "no key on a failed lookup")
	})

	t.Run("a key verified with another configured prefix is malformed", func(t *testing.T) {
		t.Parallel()
		lookup := &memLookup{keys: keys}
		v, err := Verify(context.Background(), lookup, "acme", active, testOrg, now)
		require.NoError(t, err)
		require.Equal(t, ReasonMalformed, v.Reason)
	})
}
