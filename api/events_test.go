package api_test

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

func TestKeyEvents200FullHistoryInOrderInTheWireEnvelope(t *testing.T) {
	t.Parallel()
	b := setup(t)
	org := "acme"
	expires := b.clock.Now().Add(48 * time.Hour)
	k := b.generate(t, org, "production-key", &expires, hdr("X-Actor", "alice@example.com"))
	generatedAt := b.clock.Now()
	b.clock.Advance(time.Minute)
	b.admin(t, http.MethodPost, keyPath(org, k.ID)+"/revoke", `{"reason":"leaked in a log"}`, hdr("X-Actor", "bob@example.com"))

	res := b.admin(t, http.MethodGet, keyPath(org, k.ID)+"/events", "")
	requireJSON(t, res, http.StatusOK)
	require.NotContains(t, string(res.Body), k.Key)
	raw := decode[struct {
		Events []map[string]any `json:"events"`
	}](t, res)
	require.Len(t, raw.Events, 2)
	for _, e := range raw.Events {
		keys := make([]string, 0, len(e))
		for k := range e {
			keys = append(keys, k)
		}
		require.ElementsMatch(t, []string{"id", "type", "org_id", "key_id", "stream_version", "occurred_at", "actor", "data", "position"}, keys)
	}

	events := decode[eventsBody](t, res).Events
	gen, rev := events[0], events[1]
	hash := domain.HashKey(k.Key).String()

	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, gen.ID)
	require.Equal(t, domain.TypeKeyGenerated, gen.Type)
	require.Equal(t, org, gen.OrgID)
	require.Equal(t, k.ID, gen.KeyID)
	require.Equal(t, int64(1), gen.StreamVersion)
	require.Equal(t, domain.FormatTime(generatedAt), gen.OccurredAt)
	require.Equal(t, "alice@example.com", gen.Actor)
	require.Equal(t, map[string]any{
		"key_id": k.ID, "name": "production-key", "key_hash": hash, "masked": k.Masked,
		"expires_at": expires.UTC().Format(time.RFC3339),
	}, gen.Data)
	require.Positive(t, gen.Position)

	require.NotEqual(t, gen.ID, rev.ID)
	require.Equal(t, domain.TypeKeyRevoked, rev.Type)
	require.Equal(t, org, rev.OrgID)
	require.Equal(t, k.ID, rev.KeyID)
	require.Equal(t, int64(2), rev.StreamVersion)
	require.Equal(t, domain.FormatTime(b.clock.Now()), rev.OccurredAt)
	require.Equal(t, "bob@example.com", rev.Actor)
	require.Equal(t, map[string]any{"key_id": k.ID, "key_hash": hash, "reason": "leaked in a log"}, rev.Data)
	require.Greater(t, rev.Position, gen.Position)
}

func TestEvents(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"key events 200 actor is empty without X-Actor", keyEvents200ActorIsEmptyWithoutXActor},
		shared{"key events 404 absent, malformed or another organization's key", keyEvents404AbsentMalformedOrAnotherOrganizationsKey},
		shared{"org events 200 ledger order, paged with next, only that organization", orgEvents200LedgerOrderPagedWithNextOnlyThatOrganization},
		shared{"org events 400 bad cursor or limit", orgEvents400BadCursorOrLimit},
	)
}

func keyEvents200ActorIsEmptyWithoutXActor(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	events := b.keyEvents(t, org, k.ID)
	require.Len(t, events, 1)
	require.Equal(t, "", events[0].Actor)
}

func keyEvents404AbsentMalformedOrAnotherOrganizationsKey(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)
	for name, path := range map[string]string{
		"absent":           keyPath(org, domain.NewKeyID()),
		"malformed key id": keyPath(org, "nope"),
		"another org":      keyPath(org+"-b", k.ID),
	} {
		res := b.admin(t, http.MethodGet, path+"/events", "")
		p := requireProblem(t, res, http.StatusNotFound)
		require.Equal(t, "key not found", p["detail"], name)
		require.NotContains(t, string(res.Body), k.Masked)
	}
	requireProblem(t, b.do(t, http.MethodGet, keyPath(org, k.ID)+"/events", ""), http.StatusUnauthorized)
}

// orgLog walks an organization's audit log with the given page size until a
// page comes back empty, and returns the events and the final token.
func (b *bundle) orgLog(t testing.TB, org string, limit string) ([]eventBody, string) {
	t.Helper()
	var all []eventBody
	after := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 100, "the walk ends")
		path := "/v1/orgs/" + org + "/events?limit=" + limit
		if after != "" {
			path += "&after=" + url.QueryEscape(after)
		}
		res := b.admin(t, http.MethodGet, path, "")
		requireJSON(t, res, http.StatusOK)
		page := decode[eventsBody](t, res)
		require.NotNil(t, page.Events, "events is an array, never null")
		require.NotEmpty(t, page.Next, "next is returned on every page")
		if len(page.Events) == 0 {
			if after != "" {
				require.Equal(t, after, page.Next, "an empty page keeps the place")
			}
			return all, page.Next
		}
		all = append(all, page.Events...)
		after = page.Next
	}
}

func orgEvents200LedgerOrderPagedWithNextOnlyThatOrganization(t *testing.T, b *bundle, org string) {
	var ids []string
	for i := 0; i < 4; i++ {
		k := b.generate(t, org, "k", nil, hdr("X-Actor", "alice"))
		ids = append(ids, k.ID)
		b.generate(t, org+"-b", "other", nil)
	}
	b.revoke(t, org, ids[1], hdr("X-Actor", "bob"))

	// The audit log shows a transaction once every older one in the cluster
	// has finished (the xid8 horizon), so wait for it to catch up.
	var events []eventBody
	b.awaitLedger(t, "the audit log to show the 5 events", func() bool {
		events, _ = b.orgLog(t, org, "200")
		return len(events) == 5
	})
	for _, limit := range []string{"1", "2", "3"} {
		paged, _ := b.orgLog(t, org, limit)
		require.Equal(t, events, paged, "limit=%s", limit)
	}

	var got []string
	for i, e := range events {
		require.Equal(t, org, e.OrgID, "only that organization")
		if i > 0 {
			require.Greater(t, e.Position, events[i-1].Position, "ledger order")
		}
		got = append(got, e.Type+" "+e.KeyID+" "+e.Actor)
	}
	require.Equal(t, []string{
		"key.generated " + ids[0] + " alice",
		"key.generated " + ids[1] + " alice",
		"key.generated " + ids[2] + " alice",
		"key.generated " + ids[3] + " alice",
		"key.revoked " + ids[1] + " bob",
	}, got)

	// A client polling with the last token sees only what came after.
	_, next := b.orgLog(t, org, "50")
	k := b.generate(t, org, "later", nil)
	b.awaitLedger(t, "the new event after the token", func() bool {
		res := b.admin(t, http.MethodGet, "/v1/orgs/"+org+"/events?after="+url.QueryEscape(next), "")
		requireJSON(t, res, http.StatusOK)
		page := decode[eventsBody](t, res)
		if len(page.Events) == 0 {
			return false
		}
		require.Len(t, page.Events, 1)
		require.Equal(t, k.ID, page.Events[0].KeyID)
		return true
	})

	// An organization with no events gets an empty page, not an error.
	res := b.admin(t, http.MethodGet, "/v1/orgs/"+org+"-empty/events", "")
	requireJSON(t, res, http.StatusOK)
	require.Empty(t, decode[eventsBody](t, res).Events)
}

func orgEvents400BadCursorOrLimit(t *testing.T, b *bundle, org string) {
	for name, query := range map[string]string{
		"after not base64":    "after=" + url.QueryEscape("!!"),
		"after garbage":       "after=" + base64.RawURLEncoding.EncodeToString([]byte("garbage")),
		"after negative":      "after=" + base64.RawURLEncoding.EncodeToString([]byte("1.-5")),
		"after bad xid":       "after=" + base64.RawURLEncoding.EncodeToString([]byte("x.5")),
		"limit 0":             "limit=0",
		"limit 201":           "limit=201",
		"limit not a number":  "limit=ten",
		"after a list cursor": "after=" + base64.RawURLEncoding.EncodeToString([]byte("1700000000000000.key_AAAAAAAAAAAAAAAAAAAA")),
	} {
		t.Run(name, func(t *testing.T) {
			requireProblem(t, b.admin(t, http.MethodGet, "/v1/orgs/"+org+"/events?"+query, ""), http.StatusBadRequest)
		})
	}
	requireProblem(t, b.admin(t, http.MethodGet, "/v1/orgs/acme.corp/events", ""), http.StatusBadRequest)
	requireProblem(t, b.do(t, http.MethodGet, "/v1/orgs/"+org+"/events", ""), http.StatusUnauthorized)
}
