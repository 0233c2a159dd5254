package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/internal/pgtest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestHelpExplainsEveryFlag(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"serve", "--help"}, env(nil), &out, &out)
	require.ErrorIs(t, err, flag.ErrHelp)
	for _, want := range []string{"-database-url", "KEYLEDGER_DATABASE_URL", "-http-addr", "KEYLEDGER_HTTP_ADDR",
		"-nats-url", "KEYLEDGER_NATS_URL", "-data-dir", "KEYLEDGER_DATA_DIR", "-key-prefix", "KEYLEDGER_KEY_PREFIX",
		"KEYLEDGER_ADMIN_TOKEN", "-shutdown-timeout", "-log-level"} {
		require.Contains(t, out.String(), want)
	}
	out.Reset()
	require.ErrorIs(t, run(context.Background(), []string{"--help"}, env(nil), &out, &out), flag.ErrHelp)
	require.Contains(t, out.String(), "serve")
}

func TestUnknownCommandFails(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"frobnicate"}, env(nil), &out, &out)
	require.ErrorContains(t, err, `unknown command "frobnicate"`)
}

func TestWrongSettingsFailAtStartNamingEachVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"serve"}, env(map[string]string{
		"KEYLEDGER_DATABASE_URL": "mysql://nope",
		"KEYLEDGER_HTTP_ADDR":    "not-an-address",
		"KEYLEDGER_ADMIN_TOKEN":  "short",
		"KEYLEDGER_NATS_URL":     "http://127.0.0.1:4222",
		"KEYLEDGER_KEY_PREFIX":   "Bad_Prefix",
		"KEYLEDGER_LOG_LEVEL":    "loud",
		"KEYLEDGER_DATA_DIR":     "/dev/null",
	}), &out, &out)
	require.Error(t, err)
	for _, name := range []string{"KEYLEDGER_DATABASE_URL", "KEYLEDGER_HTTP_ADDR", "KEYLEDGER_ADMIN_TOKEN",
		"KEYLEDGER_NATS_URL", "KEYLEDGER_KEY_PREFIX", "KEYLEDGER_LOG_LEVEL", "KEYLEDGER_DATA_DIR"} {
		require.Contains(t, err.Error(), name)
	}
	require.NotContains(t, err.Error(), "short", "a token never appears in an error")
	require.Empty(t, out.String(), "nothing is served or printed on a bad configuration")
}

func TestAFlagOverridesItsVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	_, err := parseConfig("serve", []string{"--key-prefix", "acme"}, env(map[string]string{"KEYLEDGER_KEY_PREFIX": "BAD"}), &out, "")
	require.NoError(t, err)
}

// freshDatabaseURL names a database that does not exist yet, dropped when t ends.
func freshDatabaseURL(t *testing.T) string {
	t.Helper()
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	name := "keyledger_cmd_" + hex.EncodeToString(b)
	cfg, err := pgx.ParseConfig(pgtest.URL())
	require.NoError(t, err)
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), pgtest.URL())
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

// lineWaiter reads a process's output line by line, so a test can wait for
// a line.
type lineWaiter struct {
	lines chan string
}

func newLineWaiter(r io.Reader) *lineWaiter {
	w := &lineWaiter{lines: make(chan string, 100)}
	go func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			w.lines <- s.Text()
		}
		close(w.lines)
	}()
	return w
}

// waitFor returns the first line holding substr.
func (w *lineWaiter) waitFor(t *testing.T, substr string) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-w.lines:
			if !ok {
				t.Fatalf("output ended before a line with %q", substr)
			}
			if strings.Contains(l, substr) {
				return l
			}
		case <-timeout:
			t.Fatalf("no line with %q within 30s", substr)
		}
	}
}

func TestServeCreatesTheDatabaseAndKeepsAGeneratedTokenPrintedOnce(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	vars := env(map[string]string{
		"KEYLEDGER_DATABASE_URL": freshDatabaseURL(t),
		"KEYLEDGER_HTTP_ADDR":    "127.0.0.1:0",
		"KEYLEDGER_DATA_DIR":     dataDir,
	})
	start := func() (base string, stop func(), printed []string) {
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() { done <- run(ctx, []string{"serve"}, vars, pw, io.Discard); pw.Close() }()
		lines := newLineWaiter(pr)
		var seen []string
		for {
			l := lines.waitFor(t, "")
			seen = append(seen, l)
			if strings.Contains(l, "serving on ") {
				base = strings.TrimSpace(l[strings.Index(l, "http://"):])
				break
			}
		}
		return base, func() {
			cancel()
			require.NoError(t, <-done)
		}, seen
	}

	base, stop, printed := start()
	stored, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	require.NoError(t, err)
	token := strings.TrimSpace(string(stored))
	require.Contains(t, strings.Join(printed, "\n"), token, "the generated token is printed on first start")
	info, err := os.Stat(filepath.Join(dataDir, "admin-token"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	req, _ := http.NewRequest(http.MethodGet, base+"/v1/orgs/acme/keys", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	stop()

	base, stop, printed = start()
	defer stop()
	require.NotContains(t, strings.Join(printed, "\n"), token, "the token is printed only once")
	req2, _ := http.NewRequest(http.MethodGet, base+"/v1/orgs/acme/keys", nil)
	req2.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req2)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the kept token still works after a restart")
}

func TestSIGTERMDrainsInFlightRequestsAndExitsCleanly(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "keyledger")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run())

	dbURL := freshDatabaseURL(t)
	cmd := exec.Command(bin, "serve", "--http-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "KEYLEDGER_DATABASE_URL="+dbURL, "KEYLEDGER_DATA_DIR="+t.TempDir(),
		"KEYLEDGER_ADMIN_TOKEN=test-token-0123456789")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	logs := newLineWaiter(stderr)
	line := newLineWaiter(stdout).waitFor(t, "serving on ")
	base := strings.TrimSpace(line[strings.Index(line, "http://"):])

	// Hold the list view locked so that a generate blocks inside its
	// transaction: an in-flight request at the moment of SIGTERM.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `LOCK TABLE key_list IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	result := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/orgs/acme/keys", strings.NewReader(`{"name":"in-flight"}`))
		req.Header.Set("Authorization", "Bearer test-token-0123456789")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			result <- 0
			return
		}
		resp.Body.Close()
		result <- resp.StatusCode
	}()
	// pg_stat_activity is read outside the locking transaction, whose
	// statistics snapshot would never change.
	watcher, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer watcher.Close(ctx)
	waitUntil(t, func() bool {
		var n int
		_ = watcher.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO key_list%'`).Scan(&n)
		return n > 0
	})
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	logs.waitFor(t, "shutting down")
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	waitUntil(t, func() bool { // no new connection is accepted while draining
		resp, err := fresh.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
	require.NoError(t, tx.Rollback(ctx))

	require.Equal(t, http.StatusCreated, <-result, "the in-flight request completes")
	require.NoError(t, cmd.Wait(), "exit status 0")
	var count int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&count))
	require.Equal(t, 1, count)
}

// adminCall sends an admin API request with a JSON body to the service at
// base and returns its JSON answer, which must be a success.
func adminCall(t *testing.T, base, token, method, path, body string) map[string]any {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Less(t, resp.StatusCode, 300)
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(errors.New("condition not met within 30s"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
