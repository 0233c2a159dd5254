package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
	"github.com/keyledger/keyledger/internal/pgtest"
	"github.com/keyledger/keyledger/projections"
)

func TestAuditAndViewsHelpExplainEveryFlag(t *testing.T) {
	t.Parallel()
	for cmd, want := range map[string][]string{
		"audit public-key": {"-data-dir", "-audit-origin", "KEYLEDGER_AUDIT_SIGNING_KEY"},
		"audit export":     {"-database-url", "-org", "-since"},
		"audit verify":     {"-database-url", "-data-dir", "-file", "-public-key", "bad seq"},
		"audit replay":     {"-database-url", "-org", "-at"},
		"views rebuild":    {"-database-url", "swap"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), append(strings.Fields(cmd), "--help"), env(nil), &out, &out)
		require.ErrorIs(t, err, flag.ErrHelp, cmd)
		for _, w := range want {
			require.Contains(t, out.String(), w, cmd)
		}
		require.NotContains(t, out.String(), "-http-addr", "%s: only the flags it reads", cmd)
	}
	var out bytes.Buffer
	require.ErrorIs(t, run(context.Background(), []string{"audit", "--help"}, env(nil), &out, &out), flag.ErrHelp)
	require.Contains(t, out.String(), "replay")
	require.ErrorContains(t, run(context.Background(), []string{"audit", "nope"}, env(nil), &out, &out), `unknown audit command "nope"`)
	require.ErrorContains(t, run(context.Background(), []string{"views", "nope"}, env(nil), &out, &out), `unknown views command "nope"`)
}

func TestAuditPublicKeyGeneratesTheSigningKeyOnceWithMode0600(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	e := env(map[string]string{"KEYLEDGER_DATA_DIR": dir, "KEYLEDGER_AUDIT_ORIGIN": "example.com/audit"})
	var out, errOut bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"audit", "public-key"}, e, &out, &errOut))
	vkey := strings.TrimSpace(out.String())
	require.True(t, strings.HasPrefix(vkey, "example.com/audit+"), vkey)
	_, err := audit.NewVerifier(vkey)
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(dir, "audit-signing-key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.NotContains(t, out.String()+errOut.String(), "PRIVATE", "the signing key is never printed")

	out.Reset()
	require.NoError(t, run(context.Background(), []string{"audit", "public-key"}, e, &out, &errOut))
	require.Equal(t, vkey, strings.TrimSpace(out.String()), "the key is kept")

	// A key given by configuration wins; a malformed one fails naming its variable.
	skey, want, err := audit.GenerateKey("other")
	require.NoError(t, err)
	out.Reset()
	require.NoError(t, run(context.Background(), []string{"audit", "public-key"},
		env(map[string]string{"KEYLEDGER_DATA_DIR": dir, "KEYLEDGER_AUDIT_SIGNING_KEY": skey}), &out, &errOut))
	require.Equal(t, want, strings.TrimSpace(out.String()))
	err = run(context.Background(), []string{"audit", "public-key"},
		env(map[string]string{"KEYLEDGER_DATA_DIR": dir, "KEYLEDGER_AUDIT_SIGNING_KEY": "PRIVATE+KEY+broken"}), &out, &errOut)
	require.ErrorContains(t, err, "KEYLEDGER_AUDIT_SIGNING_KEY")
	require.NotContains(t, err.Error(), "broken")
}

// TestAuditCommandsEndToEnd runs the security team's tools against a real
// ledger: verify, export and its offline check, replay at a time, tampering
// detected by name, and the online rebuild of the views.
func TestAuditCommandsEndToEnd(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := pgtest.NewDatabase(t)
	pool := pgtest.PoolFor(t, url, 4)
	dir := t.TempDir()
	e := env(map[string]string{"KEYLEDGER_DATABASE_URL": url, "KEYLEDGER_DATA_DIR": dir})
	var out, errOut bytes.Buffer
	require.NoError(t, run(ctx, []string{"audit", "public-key"}, e, &out, &errOut))
	vkey := strings.TrimSpace(out.String())

	// A ledger: three keys of acme, one revoked at 09:30, one key of globex.
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	now := time.Date(2026, 3, 3, 9, 0, 0, 0, time.UTC)
	ledger := &domain.Ledger{Store: store, KeyPrefix: "kl", Now: func() time.Time { return now }}
	var acme []string
	for i, org := range []string{"acme", "globex", "acme", "acme"} {
		g, err := ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: org, Name: "key-" + string(rune('a'+i))}, "")
		require.NoError(t, err)
		if org == "acme" {
			acme = append(acme, g.Key.ID)
		}
		now = now.Add(10 * time.Minute)
	}
	_, err := ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: "acme", KeyID: acme[0], Reason: "leaked"})
	require.NoError(t, err)
	key, _, err := signingKey(Config{DataDir: dir}, false)
	require.NoError(t, err)
	signer, err := audit.NewSigner(key)
	require.NoError(t, err)
	s, err := sealer.New(store, sealer.Options{Signer: signer})
	require.NoError(t, err)
	_, err = s.CatchUp(ctx)
	require.NoError(t, err)

	out.Reset()
	require.NoError(t, run(ctx, []string{"audit", "verify"}, e, &out, &errOut))
	require.Contains(t, out.String(), "OK: 5 sealed events and 1 signed checkpoints")

	out.Reset()
	require.NoError(t, run(ctx, []string{"audit", "export", "--org", "acme"}, e, &out, &errOut))
	export := filepath.Join(t.TempDir(), "acme.jsonl")
	require.NoError(t, os.WriteFile(export, out.Bytes(), 0o600))
	require.Equal(t, 1+4, strings.Count(out.String(), "\n"), "the header and acme's 4 events")
	out.Reset()
	require.NoError(t, run(ctx, []string{"audit", "verify", "--file", export, "--public-key", vkey}, env(nil), &out, &errOut))
	require.Contains(t, out.String(), "OK: 4 events of acme")

	altered := strings.Replace(readFile(t, export), `"reason":"leaked"`, `"reason":"rotated"`, 1)
	require.NoError(t, os.WriteFile(export, []byte(altered), 0o600))
	out.Reset()
	err = run(ctx, []string{"audit", "verify", "--file", export, "--public-key", vkey}, env(nil), &out, &errOut)
	require.ErrorContains(t, err, "line 5")
	require.Contains(t, out.String(), "FAILED")

	// Replay: at 09:25, before the revocation, key a is active and key d
	// does not exist yet; at 09:45 key a is revoked.
	out.Reset()
	require.NoError(t, run(ctx, []string{"audit", "replay", "--org", "acme", "--at", "2026-03-03T09:25:00Z"}, e, &out, &errOut))
	states := decodeLines[keyState](t, out.String())
	require.Len(t, states, 2)
	require.Equal(t, acme[0], states[0].ID)
	require.Equal(t, "active", states[0].Status)
	out.Reset()
	require.NoError(t, run(ctx, []string{"audit", "replay", "--org", "acme", "--at", "2026-03-03T09:45:00Z"}, e, &out, &errOut))
	states = decodeLines[keyState](t, out.String())
	require.Len(t, states, 3)
	require.Equal(t, "revoked", states[0].Status)
	require.Equal(t, "leaked", states[0].RevokeReason)

	out.Reset()
	require.NoError(t, run(ctx, []string{"views", "rebuild"}, e, &out, &errOut))
	require.Contains(t, out.String(), "rebuilt from 5 events")
	require.Contains(t, errOut.String(), "replayed events into the new views")

	// Tampering is named.
	_, err = pool.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER events_append_only;
		UPDATE events SET actor = 'mallory' WHERE position = (SELECT position FROM seals WHERE seq = 2);
		ALTER TABLE events ENABLE TRIGGER events_append_only`)
	require.NoError(t, err)
	out.Reset()
	err = run(ctx, []string{"audit", "verify"}, e, &out, &errOut)
	require.ErrorContains(t, err, "first bad seq 2")
	require.Contains(t, out.String(), "FAILED: first bad seq 2")
}

func TestAuditCommandsRefuseBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := env(map[string]string{"KEYLEDGER_DATA_DIR": t.TempDir()})
	var out bytes.Buffer
	for args, want := range map[string]string{
		"audit export":                                  "--org: required",
		"audit export --org bad!":                       "--org: required",
		"audit export --org a --since yesterday":        "RFC 3339",
		"audit replay --org a":                          "--at: required",
		"audit replay --at 2026-01-01T00:00:00Z":        "--org: required",
		"audit verify --file x.jsonl":                   "--public-key: required",
		"audit verify --file /nonexistent --public-key": "flag needs an argument",
		"audit verify":                                  "no audit signing key",
		"audit verify --public-key nope":                "--public-key",
		"audit replay --org a --at 2026 extra":          "RFC 3339",
	} {
		err := run(ctx, strings.Fields(args), e, &out, &out)
		require.ErrorContains(t, err, want, args)
	}
	_, vkey, err := audit.GenerateKey("x")
	require.NoError(t, err)
	err = run(ctx, []string{"audit", "verify", "--file", "/nonexistent.jsonl", "--public-key", vkey}, e, &out, &out)
	require.ErrorContains(t, err, "--file")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func decodeLines[T any](t *testing.T, s string) []T {
	t.Helper()
	var out []T
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		var v T
		require.NoError(t, json.Unmarshal([]byte(line), &v), line)
		out = append(out, v)
	}
	return out
}

// TestAuditReplayIsNotCutShortByAnOpenTransaction: a transaction left open
// anywhere on the server holds the xid8 horizon back; a revocation committed
// after it began must still be in the replay, which reads everything
// committed, not up to the horizon.
func TestAuditReplayIsNotCutShortByAnOpenTransaction(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := pgtest.NewDatabase(t)
	pool := pgtest.PoolFor(t, url, 4)
	store := eventstore.New(pool, projections.KeyList{}, projections.KeyLookup{})
	now := time.Date(2026, 3, 3, 9, 0, 0, 0, time.UTC)
	ledger := &domain.Ledger{Store: store, KeyPrefix: "kl", Now: func() time.Time { return now }}
	g, err := ledger.GenerateKey(ctx, domain.GenerateKey{OrgID: "acme", Name: "k"}, "")
	require.NoError(t, err)

	held, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = held.Rollback(context.Background()) }()
	_, err = held.Exec(ctx, `SELECT pg_current_xact_id()`)
	require.NoError(t, err)

	now = now.Add(time.Minute)
	_, err = ledger.RevokeKey(ctx, domain.RevokeKey{OrgID: "acme", KeyID: g.Key.ID, Reason: "leaked"})
	require.NoError(t, err)

	var out, errOut bytes.Buffer
	e := env(map[string]string{"KEYLEDGER_DATABASE_URL": url})
	require.NoError(t, run(ctx, []string{"audit", "replay", "--org", "acme", "--at", "2026-03-03T09:05:00Z"}, e, &out, &errOut))
	states := decodeLines[keyState](t, out.String())
	require.Len(t, states, 1)
	require.Equal(t, "revoked", states[0].Status, "the revocation committed while another transaction was open is replayed")
}
