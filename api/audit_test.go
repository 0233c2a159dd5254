package api_test

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/domain"
)

func TestAuditCheckpoint404BeforeAnythingIsSealedThen200PublicSignedNote(t *testing.T) {
	t.Parallel()
	b := setup(t)
	requireProblem(t, b.do(t, http.MethodGet, "/v1/audit/checkpoint", ""), http.StatusNotFound)

	b.generate(t, "acme", "k1", nil)
	b.generate(t, "acme", "k2", nil)
	size := b.seal(t)

	res := b.do(t, http.MethodGet, "/v1/audit/checkpoint", "") // no admin token
	require.Equal(t, http.StatusOK, res.Status)
	require.Equal(t, "text/plain; charset=utf-8", res.Header.Get("Content-Type"))
	cp, err := audit.OpenCheckpoint(res.Body, b.verifier)
	require.NoError(t, err)
	require.Equal(t, size, cp.Size)
	require.EqualValues(t, 2, cp.Size)
}

func TestAuditProofs200VerifyAgainstTheCheckpoint(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	for i := 0; i < 5; i++ {
		b.generate(t, org, fmt.Sprintf("k%d", i), nil)
	}
	size1 := b.seal(t)
	cp1, err := audit.OpenCheckpoint(b.do(t, http.MethodGet, "/v1/audit/checkpoint", "").Body, b.verifier)
	require.NoError(t, err)
	for i := 0; i < 20; i++ {
		b.generate(t, org, fmt.Sprintf("k%d", i+5), nil)
	}
	size2 := b.seal(t)
	cp2, err := audit.OpenCheckpoint(b.do(t, http.MethodGet, "/v1/audit/checkpoint", "").Body, b.verifier)
	require.NoError(t, err)
	require.Equal(t, size2, cp2.Size)

	// Every event of the org log carries its seq and hash, and its inclusion
	// proof leads to the signed root.
	events, _ := b.orgLog(t, org, "200")
	require.Len(t, events, int(size2))
	for _, e := range events {
		require.NotNil(t, e.Seq, "event at position %d is sealed", e.Position)
		res := b.admin(t, http.MethodGet, fmt.Sprintf("/v1/audit/proof/inclusion?seq=%d&size=%d", *e.Seq, size2), "")
		requireJSON(t, res, http.StatusOK)
		p := decode[audit.Inclusion](t, res)
		require.Equal(t, e.Hash, p.LeafHash)
		leaf, _ := hex.DecodeString(p.LeafHash)
		proof, err := audit.ParseHex(p.Proof)
		require.NoError(t, err)
		require.NoError(t, audit.VerifyInclusion(uint64(*e.Seq), size2, leaf, proof, cp2.Root))
	}
	// Without size: against the latest checkpoint.
	p := decode[audit.Inclusion](t, b.admin(t, http.MethodGet, "/v1/audit/proof/inclusion?seq=0", ""))
	require.Equal(t, size2, p.TreeSize)

	res := b.admin(t, http.MethodGet, fmt.Sprintf("/v1/audit/proof/consistency?from=%d&to=%d", size1, size2), "")
	requireJSON(t, res, http.StatusOK)
	c := decode[audit.Consistency](t, res)
	proof, err := audit.ParseHex(c.Proof)
	require.NoError(t, err)
	require.NoError(t, audit.VerifyConsistency(size1, size2, proof, cp1.Root, cp2.Root))
	proof[0][0] ^= 1
	require.Error(t, audit.VerifyConsistency(size1, size2, proof, cp1.Root, cp2.Root), "a forged proof does not verify")
}

func TestAuditProofs400BadNumbersAnd401WithoutTheAdminToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.generate(t, "acme", "k", nil)
	b.generate(t, "acme", "k2", nil)
	b.seal(t)
	for _, q := range []string{
		"inclusion", "inclusion?seq=", "inclusion?seq=-1", "inclusion?seq=x", "inclusion?seq=1.5",
		"inclusion?seq=2&size=2", "inclusion?seq=0&size=3", "inclusion?seq=99999999999999999999",
		"inclusion?seq=0&size=9007199254740992",
		"consistency", "consistency?from=0&to=2", "consistency?from=2&to=1", "consistency?from=1&to=3", "consistency?from=a",
	} {
		requireProblem(t, b.admin(t, http.MethodGet, "/v1/audit/proof/"+q, ""), http.StatusBadRequest)
	}
	requireProblem(t, b.do(t, http.MethodGet, "/v1/audit/proof/inclusion?seq=0", ""), http.StatusUnauthorized)
	requireProblem(t, b.do(t, http.MethodGet, "/v1/audit/proof/consistency?from=1&to=2", ""), http.StatusUnauthorized)
}

func TestKeyEventsCarrySeqAndHashOnlyOnceSealed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	k := b.generate(t, "acme", "k", nil)
	b.revoke(t, "acme", k.ID)
	for _, e := range b.keyEvents(t, "acme", k.ID) {
		require.Nil(t, e.Seq)
		require.Empty(t, e.Hash)
	}
	res := b.admin(t, http.MethodGet, keyPath("acme", k.ID)+"/events", "")
	require.NotContains(t, string(res.Body), `"seq"`, "unsealed events have no seq member")
	b.seal(t)
	events := b.keyEvents(t, "acme", k.ID)
	require.Len(t, events, 2)
	require.EqualValues(t, 0, *events[0].Seq)
	require.EqualValues(t, 1, *events[1].Seq)
	require.Len(t, events[1].Hash, 64)
}

// TestKeyAsOfAnswersAsTheKeyStoodThen protects the point-in-time question
// security teams ask: was this key valid at 09:14?
func TestKeyAsOfAnswersAsTheKeyStoodThen(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	created := b.clock.Now()
	k := b.generate(t, org, "production-key", ptr(created.Add(30*24*time.Hour)))
	b.clock.Advance(time.Hour)
	revokedAt := b.clock.Now()
	b.revoke(t, org, k.ID)
	b.clock.Advance(time.Hour)

	at := func(ts time.Time) *response {
		return b.admin(t, http.MethodGet, keyPath(org, k.ID)+"?as_of="+url.QueryEscape(domain.FormatTime(ts)), "")
	}
	requireDetail(t, at(created.Add(-time.Second)), http.StatusNotFound,
		"the key did not exist yet at "+domain.FormatTime(created.Add(-time.Second)))

	before := decode[keyBody](t, at(revokedAt.Add(-time.Minute)))
	require.Equal(t, "active", before.Status)
	require.Nil(t, before.RevokedAt)
	require.Equal(t, "production-key", before.Name)

	after := decode[keyBody](t, at(revokedAt))
	require.Equal(t, "revoked", after.Status)
	require.NotNil(t, after.RevokedAt)

	// The status is the one it had then: 29 days after creation it
	// was about to expire, had it not been revoked.
	now := decode[keyBody](t, b.admin(t, http.MethodGet, keyPath(org, k.ID), ""))
	require.Equal(t, "revoked", now.Status)

	for _, bad := range []string{"yesterday", "", "2026-13-01T00:00:00Z"} {
		requireProblem(t, b.admin(t, http.MethodGet, keyPath(org, k.ID)+"?as_of="+url.QueryEscape(bad), ""), http.StatusBadRequest)
	}
	requireDetail(t, b.admin(t, http.MethodGet, keyPath(org+"-other", k.ID)+"?as_of="+url.QueryEscape(domain.FormatTime(revokedAt)), ""),
		http.StatusNotFound, "key not found")
}
