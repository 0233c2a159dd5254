package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/consumers/notices"
	"github.com/keyledger/keyledger/domain"
)

// Config is the service's configuration, from flags and KEYLEDGER_*
// environment variables.
type Config struct {
	DatabaseURL     string
	HTTPAddr        string
	AdminToken      string
	NATSURL         string
	NATSListen      string
	SubjectPrefix   string
	Stream          string
	DataDir         string
	KeyPrefix       string
	ShutdownTimeout time.Duration
	LogLevel        string
	// AuditOrigin names the audit log, in its checkpoints; it is the name of
	// the signing key generated on first start.
	AuditOrigin string
	// AuditSigningKey is the signed-note signer key of the audit log, from
	// the environment only; if empty, the one kept in the data directory.
	AuditSigningKey string
}

// setting is one configurable value: its flag, its environment variable, its
// default and its help.
type setting struct {
	flag, env, def, help string
	target               *string
}

func (c *Config) settings() []setting {
	return []setting{
		{"database-url", "KEYLEDGER_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/keyledger?sslmode=disable",
			"Postgres URL of the event store; serve creates the database if missing, and every command applies the migrations it lacks", &c.DatabaseURL},
		{"http-addr", "KEYLEDGER_HTTP_ADDR", "127.0.0.1:8080", "host:port the HTTP API listens on", &c.HTTPAddr},
		{"nats-url", "KEYLEDGER_NATS_URL", "", "NATS server URL for revocation notices; empty starts an embedded server", &c.NATSURL},
		{"nats-listen", "KEYLEDGER_NATS_LISTEN", "127.0.0.1:0", "host:port of the embedded NATS server, used when KEYLEDGER_NATS_URL is empty; port 0 picks a free port, printed at start", &c.NATSListen},
		{"nats-subject-prefix", "KEYLEDGER_NATS_SUBJECT_PREFIX", notices.DefaultPrefix, "first token(s) of the notice subjects <prefix>.<org_id>.key.revoked; lets deployments share a NATS server", &c.SubjectPrefix},
		{"nats-stream", "KEYLEDGER_NATS_STREAM", notices.DefaultStream, "JetStream stream that keeps the notices", &c.Stream},
		{"data-dir", "KEYLEDGER_DATA_DIR", "./data", "directory for the generated admin token, embedded NATS storage and the signing key", &c.DataDir},
		{"key-prefix", "KEYLEDGER_KEY_PREFIX", domain.DefaultKeyPrefix, "prefix of generated keys: a lowercase letter, then up to 15 lowercase letters or digits", &c.KeyPrefix},
		{"log-level", "KEYLEDGER_LOG_LEVEL", "info", "log level: debug, info, warn or error", &c.LogLevel},
		{"audit-origin", "KEYLEDGER_AUDIT_ORIGIN", "keyledger", "name of the audit log in its signed checkpoints, given to the signing key generated on first start (a key's name cannot change afterwards)", &c.AuditOrigin},
	}
}

// command describes the flags of one command: the shared settings it reads
// (all of them when nil), and flags of its own.
type command struct {
	name, summary string
	settings      []string
	extra         func(fs *flag.FlagSet)
	// footer, printed after the flags, says what the environment sets
	// beyond them.
	footer string
}

const adminTokenFooter = "\nKEYLEDGER_ADMIN_TOKEN (environment only, so it stays out of process listings): the bearer token of\nthe management API; if unset, one is generated on first start, printed once and kept in <data-dir>/admin-token.\n"

const signingKeyFooter = "\nKEYLEDGER_AUDIT_SIGNING_KEY (environment only): the audit log's Ed25519 signing key as a signed-note\nsigner key (PRIVATE+KEY+<name>+<hash>+<key>); if unset, the one in <data-dir>/audit-signing-key, generated\nthere (mode 0600) on first start.\n"

// addSettings defines a flag for each setting, defaulting to its
// environment variable, else to its default.
func addSettings(fs *flag.FlagSet, settings []setting, getenv func(string) string) {
	for _, s := range settings {
		fs.StringVar(s.target, s.flag, envOr(getenv, s.env, s.def), fmt.Sprintf("%s (env %s)", s.help, s.env))
	}
}

func envOr(getenv func(string) string, env, def string) string {
	if v := getenv(env); v != "" {
		return v
	}
	return def
}

// parseConfig reads flags over environment variables over defaults, and
// validates every value, reporting all the bad ones at once, each by the
// variable that set it.
func parseConfig(name string, args []string, getenv func(string) string, stderr io.Writer, summary string) (Config, error) {
	return parseCommand(command{name: name, summary: summary, footer: adminTokenFooter + signingKeyFooter},
		args, getenv, stderr)
}

// parseCommand is parseConfig for any command: only the settings the
// command reads are flags of it, the others keep their variable's value or
// default.
func parseCommand(cmd command, args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("keyledger "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var flags []setting
	for _, s := range c.settings() {
		*s.target = envOr(getenv, s.env, s.def)
		if cmd.settings == nil || slices.Contains(cmd.settings, s.flag) {
			flags = append(flags, s)
		}
	}
	addSettings(fs, flags, getenv)
	c.ShutdownTimeout = 15 * time.Second
	if cmd.settings == nil {
		fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long SIGTERM waits for in-flight requests before closing them")
	}
	if cmd.extra != nil {
		cmd.extra(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: keyledger %s [flags]\n\n%s\n\nFlags:\n", cmd.name, cmd.summary)
		fs.PrintDefaults()
		fmt.Fprint(stderr, cmd.footer)
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.AdminToken = getenv("KEYLEDGER_ADMIN_TOKEN")
	c.AuditSigningKey = getenv("KEYLEDGER_AUDIT_SIGNING_KEY")
	return c, c.validate()
}

// validate checks every value and names the variable of each bad one.
func (c Config) validate() error {
	var errs []error
	bad := func(env, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", env, fmt.Sprintf(format, args...)))
	}
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		bad("KEYLEDGER_DATABASE_URL", "not a valid Postgres URL: %v", err)
	} else if u, err := url.Parse(c.DatabaseURL); err != nil || strings.Trim(u.Path, "/") == "" {
		bad("KEYLEDGER_DATABASE_URL", "must name a database, as in postgres://user@host:5432/keyledger")
	}
	if err := checkListenAddr(c.HTTPAddr); err != nil {
		bad("KEYLEDGER_HTTP_ADDR", "%v", err)
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		bad("KEYLEDGER_ADMIN_TOKEN", "must be at least 16 characters")
	}
	if c.NATSURL != "" {
		if err := checkNATSURL(c.NATSURL); err != nil {
			bad("KEYLEDGER_NATS_URL", "%v", err)
		}
	}
	if err := checkListenAddr(c.NATSListen); err != nil {
		bad("KEYLEDGER_NATS_LISTEN", "%v", err)
	}
	checkNotices(c.SubjectPrefix, c.Stream, bad)
	if c.DataDir == "" {
		bad("KEYLEDGER_DATA_DIR", "must not be empty")
	} else if fi, err := os.Stat(c.DataDir); err == nil && !fi.IsDir() {
		bad("KEYLEDGER_DATA_DIR", "%s is not a directory", c.DataDir)
	}
	if c.AuditOrigin == "" || strings.ContainsAny(c.AuditOrigin, "+ \t\n") || !utf8.ValidString(c.AuditOrigin) {
		bad("KEYLEDGER_AUDIT_ORIGIN", "must be a non-empty name without spaces or '+', such as keyledger.example.com/audit, got %q", c.AuditOrigin)
	}
	if c.AuditSigningKey != "" {
		if _, err := audit.NewSigner(c.AuditSigningKey); err != nil {
			bad("KEYLEDGER_AUDIT_SIGNING_KEY", "%v", err)
		}
	}
	checkCommon(c.KeyPrefix, c.LogLevel, c.ShutdownTimeout, bad, &errs)
	return joinInvalid(errs)
}

// The checks below are shared by every command's configuration. bad
// records a bad value under the variable that set it.

// checkCommon checks the settings every long-running command has.
func checkCommon(keyPrefix, logLevel string, shutdown time.Duration, bad func(env, format string, args ...any), errs *[]error) {
	if !domain.ValidKeyPrefix(keyPrefix) {
		bad("KEYLEDGER_KEY_PREFIX", "must be a lowercase letter followed by up to 15 lowercase letters or digits, got %q", keyPrefix)
	}
	switch logLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("KEYLEDGER_LOG_LEVEL", "must be debug, info, warn or error, got %q", logLevel)
	}
	if shutdown <= 0 {
		*errs = append(*errs, errors.New("--shutdown-timeout: must be positive"))
	}
}

// checkNotices checks the subject prefix and stream name.
func checkNotices(prefix, stream string, bad func(env, format string, args ...any)) {
	if err := (notices.Config{Prefix: prefix, Stream: notices.DefaultStream}).Validate(); err != nil {
		bad("KEYLEDGER_NATS_SUBJECT_PREFIX", "%v", err)
	}
	if err := (notices.Config{Prefix: notices.DefaultPrefix, Stream: stream}).Validate(); err != nil {
		bad("KEYLEDGER_NATS_STREAM", "%v", err)
	}
}

// checkNATSURL accepts one NATS URL or several, comma-separated.
func checkNATSURL(v string) error {
	for _, one := range strings.Split(v, ",") {
		u, err := url.Parse(strings.TrimSpace(one))
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			return fmt.Errorf("must be NATS URLs such as nats://127.0.0.1:4222, got %q", one)
		}
	}
	return nil
}

// checkListenAddr accepts host:port with an IP address, localhost or no host.
func checkListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("must be host:port, such as 127.0.0.1:8080, got %q", addr)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("host must be an IP address or localhost, got %q", host)
	}
	return nil
}

func joinInvalid(errs []error) error {
	if len(errs) > 0 {
		return fmt.Errorf("invalid configuration:\n%w", errors.Join(errs...))
	}
	return nil
}
