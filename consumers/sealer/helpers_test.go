package sealer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/projections"
)

// bundle is a ledger on a database of its own, with a signing key and a
// sealer.
type bundle struct {
	pool     *pgxpool.Pool
	store    *eventstore.Store
	ledger   *domain.Ledger
	signer   note.Signer
	verifier note.Verifier
	vkey     string
	sealer   *sealer.Sealer
	log      *sealer.Log
	now      time.Time
}

func setup(t *testing.T) *bundle {
	t.Helper()
	pool := pgtest.NewPool(t)
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	skey, vkey, err := audit.GenerateKey("keyledger.test/log")
	require.NoError(t, err)
	signer, err := audit.NewSigner(skey)
	require.NoError(t, err)
	verifier, err := audit.NewVerifier(vkey)
	require.NoError(t, err)
	b := &bundle{pool: pool, store: store, signer: signer, verifier: verifier, vkey: vkey, log: sealer.NewLog(pool),
		now: time.Date(2026, 3, 3, 9, 0, 0, 0, time.UTC)}
	b.ledger = &domain.Ledger{Store: store, KeyPrefix: "kl", Now: func() time.Time { return b.now }}
	b.sealer, err = sealer.New(store, sealer.Options{Signer: signer, Batch: 7})
	require.NoError(t, err)
	return b
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// populate issues n keys, alternately in two organizations, and revokes
// every third, a second apart. It returns the key ids.
func (b *bundle) populate(t *testing.T, n int) []string {
	t.Helper()
	ctx := testContext(t)
	var ids []string
	for i := 0; i < n; i++ {
		org := []string{"acme", "globex"}[i%2]
		g, err := b.ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: org, Name: fmt.Sprintf("key-%03d", i), Actor: "alice"}, "")
		require.NoError(t, err)
		ids = append(ids, g.Key.ID)
		b.now = b.now.Add(time.Second)
		if i%3 == 0 {
			_, err := b.ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: org, KeyID: g.Key.ID, Reason: "rotated", Actor: "bob"})
			require.NoError(t, err)
			b.now = b.now.Add(time.Second)
		}
	}
	return ids
}

// seal seals everything committed and signs a checkpoint; it returns the
// tree size.
func (b *bundle) seal(t *testing.T) uint64 {
	t.Helper()
	n, err := b.sealer.CatchUp(testContext(t))
	require.NoError(t, err)
	return n
}

// tamper runs statements as the superuser with the tables' append-only
// triggers disabled, as an attacker with the database's keys would.
func (b *bundle) tamper(t *testing.T, stmts ...string) {
	t.Helper()
	b.tamperTx(t, func(ctx context.Context, tx pgx.Tx) {
		for _, s := range stmts {
			_, err := tx.Exec(ctx, s)
			require.NoError(t, err, s)
		}
	})
}

// tamperTx runs do in a transaction of the superuser with the tables'
// append-only triggers disabled.
func (b *bundle) tamperTx(t *testing.T, do func(ctx context.Context, tx pgx.Tx)) {
	t.Helper()
	ctx := testContext(t)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	tables := []string{"events", "seals", "merkle_nodes", "checkpoints"}
	for _, table := range tables {
		_, err := tx.Exec(ctx, "ALTER TABLE "+table+" DISABLE TRIGGER USER")
		require.NoError(t, err)
	}
	do(ctx, tx)
	for _, table := range tables {
		_, err := tx.Exec(ctx, "ALTER TABLE "+table+" ENABLE TRIGGER USER")
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit(ctx))
}

// verify runs the whole-ledger check.
func (b *bundle) verify(t *testing.T) (sealer.Report, error) {
	t.Helper()
	return sealer.Verify(testContext(t), b.pool, b.verifier, nil)
}
