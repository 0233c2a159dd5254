package api_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

func TestTenantIsolationNoEndpointReadsChangesOrRevealsAnotherOrganizationsKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.generate(t, "org-a", "shared-name", nil)
	own := b.generate(t, "org-b", "shared-name", nil)
	eventsBefore := b.eventCount(t, "", "")

	t.Run("read", func(t *testing.T) {
		res := b.admin(t, http.MethodGet, keyPath("org-b", a.ID), "")
		absent := b.admin(t, http.MethodGet, keyPath("org-b", domain.NewKeyID()), "")
		require.Equal(t, withoutRequest(requireProblem(t, absent, http.StatusNotFound)),
			withoutRequest(requireProblem(t, res, http.StatusNotFound)))
		require.NotContains(t, string(res.Body), a.Masked)
	})

	t.Run("history", func(t *testing.T) {
		res := b.admin(t, http.MethodGet, keyPath("org-b", a.ID)+"/events", "")
		requireProblem(t, res, http.StatusNotFound)
		require.NotContains(t, string(res.Body), a.Masked)
	})

	t.Run("list", func(t *testing.T) {
		for _, query := range []string{"", "q=shared", "status=active", "limit=200"} {
			list := b.list(t, "org-b", query)
			require.Len(t, list.Keys, 1, query)
			require.Equal(t, own.ID, list.Keys[0].ID)
		}
	})

	t.Run("audit log", func(t *testing.T) {
		b.awaitLedger(t, "org-b's audit log", func() bool {
			events, _ := b.orgLog(t, "org-b", "200")
			for _, e := range events {
				require.Equal(t, "org-b", e.OrgID)
				require.NotEqual(t, a.ID, e.KeyID)
			}
			return len(events) == 1
		})
	})

	t.Run("revoke", func(t *testing.T) {
		res := b.admin(t, http.MethodPost, keyPath("org-b", a.ID)+"/revoke", `{"reason":"hostile"}`)
		p := requireProblem(t, res, http.StatusNotFound)
		require.Equal(t, "key not found", p["detail"])
		requireJSON(t, b.verify(t, a.Key, "org-a"), http.StatusOK)
		require.Equal(t, "active", decode[keyBody](t, b.admin(t, http.MethodGet, keyPath("org-a", a.ID), "")).Status)
	})

	t.Run("verify", func(t *testing.T) {
		crossOrg := requireRefused(t, b.verify(t, a.Key, "org-b"), "invalid")
		unknown := requireRefused(t, b.verify(t, domain.NewKeySecret(keyPrefix), "org-b"), "invalid")
		require.Equal(t, unknown, crossOrg)
	})

	require.Equal(t, eventsBefore, b.eventCount(t, "", ""), "the failed cross-organization attempts appended nothing")
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM events WHERE key_id = $1 AND org_id <> 'org-a'`, a.ID))
}

func withoutRequest(p map[string]any) map[string]any {
	delete(p, "request_id")
	delete(p, "instance")
	return p
}
