package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/internal/natstest"
	"github.com/keyledger/keyledger/internal/pgtest"
)

func TestBenchDatabaseNeverIsTheServiceDatabase(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url, name, wantURL, wantDB string
		wantErr                    bool
	}{
		{url: "postgres://postgres@127.0.0.1:5432/keyledger?sslmode=disable",
			wantURL: "postgres://postgres@127.0.0.1:5432/keyledger_bench?sslmode=disable", wantDB: "keyledger_bench"},
		{url: "postgres://u:secret@db:5432/prod?sslmode=require&pool_max_conns=8", name: "scratch",
			wantURL: "postgres://u:secret@db:5432/scratch?sslmode=require&pool_max_conns=8", wantDB: "scratch"},
		{url: "postgres://postgres@127.0.0.1:5432/keyledger", name: "keyledger", wantErr: true},
		{url: "postgres://postgres@127.0.0.1:5432/", wantErr: true},
		{url: "not a url", wantErr: true},
	} {
		gotURL, gotDB, err := benchDatabaseURL(tc.url, tc.name)
		if tc.wantErr {
			require.Error(t, err, tc.url)
			continue
		}
		require.NoError(t, err, tc.url)
		require.Equal(t, tc.wantURL, gotURL)
		require.Equal(t, tc.wantDB, gotDB)
	}
	require.NotContains(t, redactURL("postgres://u:secret@db/x"), "secret")
}

func TestParseConfigTakesFlagsAroundTheScenario(t *testing.T) {
	t.Parallel()
	env := func(string) string { return "" }
	var stderr bytes.Buffer
	c, err := parseConfig([]string{"--duration", "3s", "verify", "--verify-keys", "10"}, env, &stderr)
	require.NoError(t, err)
	require.Equal(t, "verify", c.scenario)
	require.Equal(t, 3*time.Second, c.duration)
	require.Equal(t, 10, c.verifyKeys)
	require.Equal(t, "keyledger_bench", c.benchDB)
	require.Equal(t, "keyledger_bench_scratch", c.scratchDB)
	require.Contains(t, c.scratchURL, "/keyledger_bench_scratch?")

	_, err = parseConfig([]string{"--help"}, env, &stderr)
	require.True(t, errors.Is(err, flag.ErrHelp))
	for _, f := range []string{"-duration", "-reload", "-fresh", "-pool-conns", "-explain",
		"-nats-url", "-nats-sync-always", "-current-timeout", "-propagation-revocations",
		"-propagation-verify-rate", "-propagation-gateway-rate", "-gateway-keys",
		"propagation", "gateway-verify"} {
		require.Contains(t, stderr.String(), f)
	}

	_, err = parseConfig([]string{"nope"}, env, &stderr)
	require.ErrorContains(t, err, "unknown scenario")
	_, err = parseConfig([]string{"list", "--list-org-keys", "10", "--list-total-keys", "5"}, env, &stderr)
	require.ErrorContains(t, err, "--list-total-keys")
	_, err = parseConfig([]string{"propagation", "--propagation-revocations", "0"}, env, &stderr)
	require.ErrorContains(t, err, "--propagation-revocations")

	c, err = parseConfig([]string{"gateway-verify"}, func(k string) string {
		if k == "KEYLEDGER_NATS_URL" {
			return "nats://nats.example:4222"
		}
		return ""
	}, &stderr)
	require.NoError(t, err)
	require.Equal(t, "nats://nats.example:4222", c.natsURL)
	c, err = parseConfig([]string{"propagation", "--nats-url", "nats://other:4222"}, env, &stderr)
	require.NoError(t, err)
	require.Equal(t, "nats://other:4222", c.natsURL)
}

// runScenario runs the bench as the command would, on a bench database of
// the test's own (so that it never drops another run's scratch database),
// and returns its exit status and the scenario's JSON line.
func runScenario(t *testing.T, args ...string) (int, map[string]any) {
	t.Helper()
	name := fmt.Sprintf("keyledger_benchtest_%d", rand.Uint32())
	args = append(args, "--database-url", pgtest.URL(), "--bench-database", name)
	t.Cleanup(func() { // the list data set is kept between runs; a test keeps nothing
		for _, db := range []string{name, name + "_scratch"} {
			u, _, err := benchDatabaseURL(pgtest.URL(), db)
			require.NoError(t, err)
			require.NoError(t, dropDatabase(context.Background(), u))
		}
	})
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, func(string) string { return "" }, &stdout, &stderr)
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	require.Contains(t, []int{0, 1}, code, "exit status: 0 (targets met) or 1 (missed), not 2 (failed)")
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var line map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &line), "the last line is the JSON line")
	for _, f := range []string{"scenario", "value", "baseline", "ratio", "target", "ok", "unit", "criterion", "requests", "loadavg_1m", "pg_tls"} {
		require.Contains(t, line, f)
	}
	require.Equal(t, code == 0, line["ok"], "the exit status follows the verdict")
	return code, line
}

// The issue 2 scenarios, each at a tiny size: they check that the scenario
// runs and reports, not its target.

func TestGenerateReportsKeysPerSecondBesideRawInserts(t *testing.T) {
	t.Parallel()
	_, line := runScenario(t, "generate", "--nats-url", natstest.URL(), "--generate-clients", "4", "--raw-conns", "4",
		"--duration", "1s", "--rounds", "1", "--warmup", "0")
	require.Equal(t, "generate", line["scenario"])
	require.Equal(t, 0.5, line["target"])
	require.Positive(t, line["value"])
	require.Positive(t, line["baseline"])
	require.Zero(t, line["errors"])
	require.GreaterOrEqual(t, line["keys_per_transaction"].(float64), 1.0)
}

func TestVerifyReportsRequestsPerSecondAndP99(t *testing.T) {
	t.Parallel()
	_, line := runScenario(t, "verify", "--nats-url", natstest.URL(), "--verify-keys", "300", "--verify-clients", "4",
		"--duration", "1s", "--rounds", "1", "--warmup", "0")
	require.Equal(t, "verify", line["scenario"])
	require.Equal(t, 5.0, line["target_p99_ms"])
	require.Positive(t, line["value"])
	require.Positive(t, line["p99_ms"])
	require.Zero(t, line["errors"])
	require.Equal(t, 300.0, line["cached_keys"])
}

// TestListRunsWithoutNATS: list runs the service without NATS (it once
// failed at start for want of a NATS server it does not use).
func TestListRunsWithoutNATS(t *testing.T) {
	t.Parallel()
	_, line := runScenario(t, "list", "--list-org-keys", "300", "--list-total-keys", "1000", "--list-clients", "2",
		"--duration", "1s", "--rounds", "1", "--warmup", "0")
	require.Equal(t, "list", line["scenario"])
	require.Equal(t, "ms (p99)", line["unit"])
	require.Positive(t, line["value"])
	require.Zero(t, line["errors"])
}

// TestPropagationReportsRevocationLatencyBesideTheNATSFloor runs the
// propagation scenario at a tiny size against the test NATS server. It
// checks the report's shape and sanity, not the target.
func TestPropagationReportsRevocationLatencyBesideTheNATSFloor(t *testing.T) {
	t.Parallel()
	_, line := runScenario(t, "propagation", "--nats-url", natstest.URL(),
		"--propagation-revocations", "50", "--propagation-verify-rate", "100", "--propagation-gateway-rate", "1000",
		"--rounds", "2", "--warmup", "0")
	require.Equal(t, "propagation", line["scenario"])
	require.Equal(t, "ms", line["unit"])
	require.Equal(t, 10.0, line["target"])
	require.Equal(t, 50.0, line["requests"])
	require.Zero(t, line["errors"])
	require.Zero(t, line["gateway_service_calls"], "every refusal came from a notice")
	p50, p99, maxMs := line["p50_ms"].(float64), line["p99_ms"].(float64), line["max_ms"].(float64)
	require.Positive(t, p99)
	require.LessOrEqual(t, p50, p99)
	require.LessOrEqual(t, p99, maxMs)
	require.Less(t, maxMs, propagationLimit.Seconds()*1000)
	require.Equal(t, p99, line["value"])
	floor := line["baseline_p99_ms"].(float64)
	require.Positive(t, floor)
	require.Equal(t, floor, line["baseline"])
	require.LessOrEqual(t, line["baseline_p50_ms"].(float64), floor)
	require.InDelta(t, p99/floor, line["ratio"].(float64), 0.01*p99/floor)
	require.Positive(t, line["background_verify_rps"])
	require.Positive(t, line["background_gateway_verify_per_s"])
}

// TestGatewayVerifyReportsNanosecondsAndAllocationsPerHit runs the
// gateway-verify scenario at a tiny size on an embedded NATS server. It
// checks the report's shape and sanity, not the target.
func TestGatewayVerifyReportsNanosecondsAndAllocationsPerHit(t *testing.T) {
	t.Parallel()
	_, line := runScenario(t, "gateway-verify", "--gateway-keys", "200", "--rounds", "1")
	require.Equal(t, "gateway-verify", line["scenario"])
	require.Equal(t, "ns/op", line["unit"])
	require.Equal(t, 1000.0, line["target"])
	value, baseline := line["value"].(float64), line["baseline"].(float64)
	require.Positive(t, value)
	require.Positive(t, baseline)
	require.InDelta(t, baseline/value, line["ratio"].(float64), 0.01)
	require.Contains(t, line, "allocs_per_op")
	require.GreaterOrEqual(t, line["allocs_per_op"].(float64), 0.0)
	require.Contains(t, line, "baseline_allocs_per_op")
	require.Zero(t, line["gateway_service_calls"], "every call was a cache hit")
	require.Positive(t, line["requests"])
}

func TestPercentileIsNearestRank(t *testing.T) {
	t.Parallel()
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	require.Equal(t, 50*time.Millisecond, percentile(ds, 0.50))
	require.Equal(t, 99*time.Millisecond, percentile(ds, 0.99))
	require.Equal(t, 100*time.Millisecond, percentile(ds, 1))
	require.Zero(t, percentile(nil, 0.99))
}

func TestListDatasetShape(t *testing.T) {
	t.Parallel()
	ds := &listDataset{org: listOrg, orgKeys: 1000, totalKeys: 10000}
	now := time.Now()
	spec := listKeySpec(ds, now)
	inOrg, revoked, expired := 0, 0, 0
	var prev time.Time
	for i := range ds.totalKeys {
		s := spec(i)
		if s.org == ds.org {
			inOrg++
		}
		require.True(t, s.created.After(prev), "keys are created in load order")
		prev = s.created
		require.True(t, s.created.Before(now))
		require.NoError(t, domain.GenerateKey{OrgID: s.org, Name: s.name}.Validate(now), "name %q", s.name)
		if s.expires != nil {
			require.True(t, s.expires.After(s.created), "expiry after creation")
			if s.expires.Before(now) {
				expired++
			}
		}
		if s.revoked != nil {
			revoked++
			require.False(t, s.revoked.Before(s.created))
		}
	}
	require.Equal(t, ds.orgKeys, inOrg)
	require.InDelta(t, 0.15, float64(revoked)/float64(ds.totalKeys), 0.02)
	require.InDelta(t, 0.10, float64(expired)/float64(ds.totalKeys), 0.02)
	require.Equal(t, spec(42), spec(42), "the data set is reproducible")
}

func TestSearchTermsMatchRealisticFractions(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 1))
	const n = 20000
	names := make([]string, n)
	for i := range names {
		names[i] = strings.ToLower(keyName(r))
	}
	frac := func(term string) float64 {
		m := 0
		for _, name := range names {
			if strings.Contains(name, term) {
				m++
			}
		}
		return float64(m) / n
	}
	require.Greater(t, frac("production"), 0.15)
	require.Less(t, frac("payments"), 0.05)
	require.Greater(t, frac("payments"), 0.005)
	require.Zero(t, frac("no-such-key-name"))
}

func TestBuildKeyUsesTheDomainFormat(t *testing.T) {
	t.Parallel()
	at := time.Now().Add(-time.Hour)
	k := buildKey(keySpec{org: "o", name: "n", created: at, revoked: &at})
	require.True(t, domain.CheckKeyFormat(domain.DefaultKeyPrefix, k.secret))
	require.Len(t, k.events, 2)
	g := k.events[0].Data.(domain.KeyGenerated)
	require.Equal(t, domain.HashKey(k.secret).String(), g.KeyHash)
	require.Equal(t, domain.MaskKey(k.secret), g.Masked)
	require.Equal(t, int64(2), k.events[1].StreamVersion)
	require.Equal(t, g.KeyHash, k.events[1].Data.(domain.KeyRevoked).KeyHash)
	for _, e := range k.events {
		b, err := e.MarshalJSON()
		require.NoError(t, err)
		require.NotContains(t, string(b), k.secret, "no plaintext in events")
	}
}

func TestUsesTLSFollowsTheURLsSSLMode(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(pgtest.URL())
	require.NoError(t, err)
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	on, err := usesTLS(t.Context(), u.String())
	require.NoError(t, err)
	require.False(t, on, "sslmode=disable")
	// Whether the server offers TLS is its own setting: with sslmode=prefer,
	// the answer must be what a connection made the same way sees.
	q.Set("sslmode", "prefer")
	u.RawQuery = q.Encode()
	on, err = usesTLS(t.Context(), u.String())
	require.NoError(t, err)
	var offered bool
	conn, err := pgx.Connect(t.Context(), u.String())
	require.NoError(t, err)
	defer conn.Close(t.Context())
	require.NoError(t, conn.QueryRow(t.Context(), `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&offered))
	require.Equal(t, offered, on, "sslmode=prefer")
}

func TestThousands(t *testing.T) {
	t.Parallel()
	require.Equal(t, "1,000,000", thousands(1000000))
	require.Equal(t, "999", thousands(999))
	require.Equal(t, "-12,345", thousands(-12345))
}
