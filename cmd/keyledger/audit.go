package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/sealer"
	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

const auditUsage = `Usage: keyledger audit <command> [flags]

Commands:
  public-key  print the audit log's public key (the signed-note verifier key)
  export      write an organization's sealed events with inclusion proofs
  verify      check the whole ledger, or offline an export (--file)
  replay      the state of every key of an organization at a time

Run 'keyledger audit <command> --help' for a command's flags.
`

func auditCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if done, err := groupHelp(args, auditUsage, "audit command", stdout); done {
		return err
	}
	switch args[0] {
	case "public-key":
		return auditPublicKey(args[1:], getenv, stdout, stderr)
	case "export":
		return auditExport(ctx, args[1:], getenv, stdout, stderr)
	case "verify":
		return auditVerify(ctx, args[1:], getenv, stdout, stderr)
	case "replay":
		return auditReplay(ctx, args[1:], getenv, stdout, stderr)
	}
	fmt.Fprint(stderr, auditUsage)
	return fmt.Errorf("unknown audit command %q", args[0])
}

const signingKeyFile = "audit-signing-key"

// signingKey returns the configured signing key, or the one kept in the data
// directory, or, if create, a new one written there with mode 0600
// (generated reports that).
func signingKey(cfg Config, create bool) (key string, generated bool, err error) {
	if cfg.AuditSigningKey != "" {
		return cfg.AuditSigningKey, false, nil
	}
	path := filepath.Join(cfg.DataDir, signingKeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		key = strings.TrimSpace(string(b))
		if _, err := audit.NewSigner(key); err != nil {
			return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: %s: %w", path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: read the audit signing key: %w", err)
	}
	if !create {
		return "", false, fmt.Errorf("no audit signing key: KEYLEDGER_AUDIT_SIGNING_KEY is unset and %s does not exist", path)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: %w", err)
	}
	key, _, err = audit.GenerateKey(cfg.AuditOrigin)
	if err != nil {
		return "", false, err
	}
	// O_EXCL: two instances starting at once on one data directory must not
	// each write a key of their own.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return signingKey(cfg, false)
	}
	if err != nil {
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: write the audit signing key: %w", err)
	}
	if _, err := f.WriteString(key + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: write the audit signing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("KEYLEDGER_DATA_DIR: write the audit signing key: %w", err)
	}
	return key, true, nil
}

// auditSigner returns the signer of checkpoints for serve, generating its key
// on first start and then printing the public key.
func auditSigner(cfg Config, stdout io.Writer) (note.Signer, error) {
	key, generated, err := signingKey(cfg, true)
	if err != nil {
		return nil, err
	}
	signer, err := audit.NewSigner(key)
	if err != nil {
		return nil, fmt.Errorf("KEYLEDGER_AUDIT_SIGNING_KEY: %w", err)
	}
	if generated {
		vkey, err := audit.VerifierKeyOf(key)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(stdout, "keyledger: generated the audit log's signing key in %s; its public key (keyledger audit public-key):\n%s\n",
			filepath.Join(cfg.DataDir, signingKeyFile), vkey)
	}
	return signer, nil
}

func auditPublicKey(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseCommand(command{name: "audit public-key", settings: []string{"data-dir", "audit-origin"}, footer: signingKeyFooter,
		summary: `Prints the audit log's public key: the signed-note verifier key that checks
its checkpoints (keyledger audit verify --public-key, or any C2SP
checkpoint verifier). Generates the signing key in the data directory if
there is none yet, as serve would on first start.`}, args, getenv, stderr)
	if err != nil {
		return err
	}
	key, generated, err := signingKey(cfg, true)
	if err != nil {
		return err
	}
	vkey, err := audit.VerifierKeyOf(key)
	if err != nil {
		return fmt.Errorf("KEYLEDGER_AUDIT_SIGNING_KEY: %w", err)
	}
	if generated {
		fmt.Fprintf(stderr, "keyledger: generated the audit log's signing key in %s\n", filepath.Join(cfg.DataDir, signingKeyFile))
	}
	fmt.Fprintln(stdout, vkey)
	return nil
}

// timeFlag is a flag holding an RFC 3339 time.
type timeFlag struct{ t time.Time }

func (f *timeFlag) String() string {
	if f.t.IsZero() {
		return ""
	}
	return domain.FormatTime(f.t)
}

func (f *timeFlag) Set(s string) error {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return errors.New("want an RFC 3339 time, such as 2026-03-03T09:14:00Z")
	}
	f.t = t
	return nil
}

// progress reports a long run on stderr, at most once a second, and once
// more at the end (done).
type progress struct {
	w     io.Writer
	what  string
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, what string) *progress {
	return &progress{w: w, what: what, start: time.Now()}
}

func (p *progress) report(n uint64) {
	if time.Since(p.last) < time.Second {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "keyledger: %s: %d so far (%.0f/s)\n", p.what, n, float64(n)/time.Since(p.start).Seconds())
}

func (p *progress) done(n uint64) {
	fmt.Fprintf(p.w, "keyledger: %s: %d in %s\n", p.what, n, time.Since(p.start).Round(time.Millisecond))
}

func auditExport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var org string
	var since timeFlag
	cfg, err := parseCommand(command{name: "audit export", settings: []string{"database-url"},
		summary: `Writes one organization's sealed events to stdout as JSON lines: first a
header with the latest signed checkpoint, then each event sealed in that
checkpoint's tree, in seq order, with its seq, leaf hash, the seq of the
organization's previous event and its inclusion proof. Check it offline with
keyledger audit verify --file. Progress goes to stderr.`,
		extra: func(fs *flag.FlagSet) {
			fs.StringVar(&org, "org", "", "organization whose events to export (required)")
			fs.Var(&since, "since", "export only events that occurred at or after this RFC 3339 time (default: the whole history)")
		}}, args, getenv, stderr)
	if err != nil {
		return err
	}
	if !domain.ValidOrgID(org) {
		return errors.New("--org: required, an organization id matching ^[A-Za-z0-9_-]{1,64}$")
	}
	pool, err := connectDatabase(ctx, cfg.DatabaseURL, toolPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	p := newProgress(stderr, "exported events of "+org)
	h, err := sealer.Export(ctx, pool, org, since.t, stdout, func(n int64) { p.report(uint64(n)) })
	if err != nil {
		return domainMessage(err)
	}
	p.done(uint64(h.Events))
	return nil
}

func auditVerify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var file, publicKey string
	cfg, err := parseCommand(command{name: "audit verify", settings: []string{"database-url", "data-dir"}, footer: signingKeyFooter,
		summary: `Without --file: checks the whole ledger in the database against its signed
checkpoints and the event table (every checkpoint's signature, gapless seqs,
each event's leaf hash derived again from its row, ledger order, each
organization's chain, the roots of the checkpoints, and events inserted behind
the sealer). The public key is --public-key, or the one of the signing key
(KEYLEDGER_AUDIT_SIGNING_KEY or <data-dir>/audit-signing-key).

With --file: checks an export offline, with no database: the checkpoint's
signature (--public-key is required), every line's hash and inclusion proof,
and that no event of the organization is missing between the first line and
the last.

Exits 0 when everything checks; otherwise prints what failed, naming the first
bad seq, and exits 1. Progress goes to stderr.`,
		extra: func(fs *flag.FlagSet) {
			fs.StringVar(&file, "file", "", "an export (keyledger audit export) to check offline; - for stdin")
			fs.StringVar(&publicKey, "public-key", "", "the audit log's public key, as keyledger audit public-key prints it")
		}}, args, getenv, stderr)
	if err != nil {
		return err
	}
	if file != "" {
		return verifyExportFile(file, publicKey, stdout, stderr)
	}
	if publicKey == "" {
		key, _, err := signingKey(cfg, false)
		if err != nil {
			return fmt.Errorf("--public-key: not given, and %w", err)
		}
		if publicKey, err = audit.VerifierKeyOf(key); err != nil {
			return fmt.Errorf("KEYLEDGER_AUDIT_SIGNING_KEY: %w", err)
		}
	}
	verifier, err := audit.NewVerifier(publicKey)
	if err != nil {
		return fmt.Errorf("--public-key: %w", err)
	}
	pool, err := connectDatabase(ctx, cfg.DatabaseURL, toolPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	p := newProgress(stderr, "verified sealed events")
	rep, err := sealer.Verify(ctx, pool, verifier, p.report)
	var problem *sealer.Problem
	if errors.As(err, &problem) {
		fmt.Fprintf(stdout, "FAILED: %v\n", problem)
		return fmt.Errorf("the ledger does not verify: %w", problem)
	}
	if err != nil {
		return err
	}
	p.done(rep.Sealed)
	fmt.Fprintf(stdout, "OK: %d sealed events and %d signed checkpoints verify against the event table; %d committed events are not sealed yet\n",
		rep.Sealed, rep.Checkpoints, rep.Unsealed)
	return nil
}

func verifyExportFile(file, publicKey string, stdout, stderr io.Writer) error {
	if publicKey == "" {
		return errors.New("--public-key: required with --file: the export is checked against the log's key, not against itself")
	}
	var r io.Reader = os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		defer f.Close()
		r = f
	}
	p := newProgress(stderr, "verified export lines")
	sum, err := audit.VerifyExport(r, publicKey, func(n int64) { p.report(uint64(n)) })
	if err != nil {
		fmt.Fprintf(stdout, "FAILED: %v\n", err)
		return fmt.Errorf("the export does not verify: %w", err)
	}
	p.done(uint64(sum.Events))
	if sum.Events == 0 {
		fmt.Fprintf(stdout, "OK: the checkpoint (tree size %d) verifies; the export of %s holds no events\n", sum.TreeSize, sum.OrgID)
		return nil
	}
	fmt.Fprintf(stdout, "OK: %d events of %s, seq %d to %d, are in the signed tree of size %d, with none of the organization's events missing between them\n",
		sum.Events, sum.OrgID, sum.FirstSeq, sum.LastSeq, sum.TreeSize)
	return nil
}

// keyState is a key as it stood at a time, as replay prints it.
type keyState struct {
	ID           string  `json:"id"`
	OrgID        string  `json:"org_id"`
	Name         string  `json:"name"`
	Masked       string  `json:"masked"`
	Status       string  `json:"status"`
	CreatedAt    string  `json:"created_at"`
	ExpiresAt    *string `json:"expires_at"`
	RevokedAt    *string `json:"revoked_at"`
	RevokeReason string  `json:"revoke_reason,omitempty"`
	Version      int64   `json:"version"`
}

func optionalTime(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := domain.FormatTime(*t)
	return &s
}

func auditReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var org string
	var at timeFlag
	cfg, err := parseCommand(command{name: "audit replay", settings: []string{"database-url"},
		summary: `Prints the state of every key of an organization at a time, rebuilt from the
organization's events (not from the views): one JSON object per line, with
the status the key had then. Keys created after that time are left out.
Progress goes to stderr.`,
		extra: func(fs *flag.FlagSet) {
			fs.StringVar(&org, "org", "", "organization whose keys to replay (required)")
			fs.Var(&at, "at", "the RFC 3339 time to replay to (required)")
		}}, args, getenv, stderr)
	if err != nil {
		return err
	}
	var errs []error
	if !domain.ValidOrgID(org) {
		errs = append(errs, errors.New("--org: required, an organization id matching ^[A-Za-z0-9_-]{1,64}$"))
	}
	if at.t.IsZero() {
		errs = append(errs, errors.New("--at: required, an RFC 3339 time such as 2026-03-03T09:14:00Z"))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	pool, err := connectDatabase(ctx, cfg.DatabaseURL, toolPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	// One read of everything committed, not OrgEvents' pages: those wait
	// for the server-wide xid8 horizon, and a transaction open anywhere
	// would end the replay early, leaving out a revocation.
	events, err := eventstore.New(pool).OrgHistory(ctx, org)
	if err != nil {
		return err
	}
	p := newProgress(stderr, "replayed events of "+org)
	streams := map[string][]domain.Event{}
	var order []string
	for i, e := range events {
		if _, ok := streams[e.KeyID]; !ok {
			order = append(order, e.KeyID)
		}
		streams[e.KeyID] = append(streams[e.KeyID], e)
		if i%5000 == 0 {
			p.report(uint64(i))
		}
	}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	keys := 0
	for _, id := range order {
		k := domain.KeyAt(streams[id], at.t)
		if k == nil {
			continue
		}
		keys++
		if err := enc.Encode(keyState{ID: k.ID, OrgID: k.OrgID, Name: k.Name, Masked: k.Masked, Status: string(k.Status(at.t)),
			CreatedAt: domain.FormatTime(k.CreatedAt), ExpiresAt: optionalTime(k.ExpiresAt), RevokedAt: optionalTime(k.RevokedAt),
			RevokeReason: k.RevokeReason, Version: k.Version}); err != nil {
			return err
		}
	}
	p.done(uint64(len(events)))
	fmt.Fprintf(stderr, "keyledger: %d keys of %s existed at %s\n", keys, org, domain.FormatTime(at.t))
	return nil
}

// domainMessage turns a domain error into its message for the terminal.
func domainMessage(err error) error {
	var de *domain.Error
	if errors.As(err, &de) {
		return errors.New(domain.ErrorMessage(err))
	}
	return err
}
