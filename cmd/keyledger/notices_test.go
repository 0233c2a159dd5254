package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// TestServeEmbedsNATSAndRelaysNoticesThatRepublishRefills runs serve with
// no NATS URL: it starts an embedded NATS server and prints its URL, a
// client connects to it and finds the notices of a generated and a revoked
// key in the stream, and after the stream is purged, notices republish puts
// them back in the same order.
func TestServeEmbedsNATSAndRelaysNoticesThatRepublishRefills(t *testing.T) {
	t.Parallel()
	dbURL := freshDatabaseURL(t)
	vars := map[string]string{
		"KEYLEDGER_DATABASE_URL": dbURL,
		"KEYLEDGER_HTTP_ADDR":    "127.0.0.1:0",
		"KEYLEDGER_DATA_DIR":     t.TempDir(),
		"KEYLEDGER_ADMIN_TOKEN":  "test-admin-token-0123456789",
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, env(vars), pw, io.Discard); pw.Close() }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	lines := newLineWaiter(pr)
	natsLine := lines.waitFor(t, "embedded NATS server on ")
	natsURL := strings.Fields(natsLine[strings.Index(natsLine, "nats://"):])[0]
	serving := lines.waitFor(t, "serving on ")
	base := strings.TrimSpace(serving[strings.Index(serving, "http://"):])

	resp, err := http.Get(base + "/readyz")
	require.NoError(t, err)
	var ready struct {
		Checks map[string]string `json:"checks"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ready))
	resp.Body.Close()
	require.Equal(t, "ok", ready.Checks["nats"], "readiness covers NATS")

	key := adminCall(t, base, vars["KEYLEDGER_ADMIN_TOKEN"], http.MethodPost, "/v1/orgs/acme/keys", `{"name":"ci"}`)
	keyID := key["id"].(string)
	adminCall(t, base, vars["KEYLEDGER_ADMIN_TOKEN"], http.MethodPost, "/v1/orgs/acme/keys/"+keyID+"/revoke", `{"reason":"leaked"}`)

	nc, err := nats.Connect(natsURL)
	require.NoError(t, err, "a gateway can connect to the embedded server")
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	read := func() []string {
		t.Helper()
		var got []string
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			s, err := js.Stream(context.Background(), "KEYLEDGER")
			if err == nil && s.CachedInfo().State.Msgs >= 2 {
				first := s.CachedInfo().State.FirstSeq
				for seq := first; seq < first+2; seq++ {
					m, err := s.GetMsg(context.Background(), seq)
					require.NoError(t, err)
					require.NotEmpty(t, m.Header.Get("Nats-Msg-Id"))
					got = append(got, m.Subject)
				}
				return got
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("the notices did not reach the embedded stream within 20 s")
		return nil
	}
	want := []string{"keyledger.acme.key.generated", "keyledger.acme.key.revoked"}
	require.Equal(t, want, read())

	s, err := js.Stream(context.Background(), "KEYLEDGER")
	require.NoError(t, err)
	require.NoError(t, s.Purge(context.Background()))
	var out, errOut bytes.Buffer
	rvars := map[string]string{"KEYLEDGER_DATABASE_URL": dbURL, "KEYLEDGER_NATS_URL": natsURL}
	require.NoError(t, run(context.Background(), []string{"notices", "republish", "--from", "1"}, env(rvars), &out, &errOut),
		errOut.String())
	require.Contains(t, out.String(), "republished 2 events")
	require.Contains(t, errOut.String(), "republished 2 events, up to position", "progress is reported")
	require.Equal(t, want, read(), "republish refills the purged stream in ledger order")
}

func TestNoticesRepublishRefusesBadInput(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	err := run(context.Background(), []string{"notices", "republish"}, env(map[string]string{"KEYLEDGER_NATS_URL": "nats://127.0.0.1:4222"}), &out, &out)
	require.ErrorContains(t, err, "--from")
	err = run(context.Background(), []string{"notices", "republish", "--from", "1"}, env(nil), &out, &out)
	require.ErrorContains(t, err, "KEYLEDGER_NATS_URL")
	err = run(context.Background(), []string{"notices", "frobnicate"}, env(nil), &out, &out)
	require.ErrorContains(t, err, `unknown subcommand "frobnicate"`)
	out.Reset()
	require.ErrorIs(t, run(context.Background(), []string{"notices", "republish", "--help"}, env(nil), &out, &out), flag.ErrHelp)
	for _, want := range []string{"-from", "-nats-url", "KEYLEDGER_NATS_STREAM", "-nats-subject-prefix", "-database-url"} {
		require.Contains(t, out.String(), want)
	}
}
