package api_test

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func names(keys []keyBody) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k.Name)
	}
	sort.Strings(out)
	return out
}

func TestList(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"200 items never carry the plaintext", list200ItemsNeverCarryThePlaintext},
		shared{"200 empty organization is an empty array", list200EmptyOrganizationIsAnEmptyArray},
		shared{"200 search is a case-insensitive substring of the name", list200SearchIsACaseInsensitiveSubstringOfTheName},
		shared{"400 refuses bad queries", list400RefusesBadQueries},
		shared{"401 without the admin token", list401WithoutTheAdminToken},
	)
}

func list200ItemsNeverCarryThePlaintext(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "production-key", nil)

	res := b.admin(t, http.MethodGet, keysPath(org), "")
	requireJSON(t, res, http.StatusOK)
	require.NotContains(t, string(res.Body), k.Key)
	raw := decode[struct {
		Keys       []map[string]any `json:"keys"`
		NextCursor *string          `json:"next_cursor"`
	}](t, res)
	require.Len(t, raw.Keys, 1)
	require.NotContains(t, raw.Keys[0], "key")
	require.Equal(t, k.Masked, raw.Keys[0]["masked"])

	list := b.list(t, org, "")
	want := k
	want.Key = ""
	require.Equal(t, []keyBody{want}, list.Keys)
	require.Nil(t, list.NextCursor)
}

func list200EmptyOrganizationIsAnEmptyArray(t *testing.T, b *bundle, org string) {
	res := b.admin(t, http.MethodGet, keysPath(org), "")
	requireJSON(t, res, http.StatusOK)
	require.JSONEq(t, `{"keys":[],"next_cursor":null}`, string(res.Body))
}

func list200SearchIsACaseInsensitiveSubstringOfTheName(t *testing.T, b *bundle, org string) {
	for _, name := range []string{"Production-Key", "production", "staging", "100%_off", "100x_off", "1000 off",
		"snake_case", "snakeXcase", `back\slash`, "ÉTÉ-key", "été-key"} {
		b.generate(t, org, name, nil)
	}
	b.generate(t, org+"-b", "production-globex", nil)

	cases := []struct {
		q    string
		want []string
	}{
		{"prod", []string{"Production-Key", "production"}},
		{"PRODUCTION-K", []string{"Production-Key"}},
		{"ction", []string{"Production-Key", "production"}},
		{"%", []string{"100%_off"}},
		{"_", []string{"100%_off", "100x_off", "snake_case"}},
		{"0%_", []string{"100%_off"}},
		{"e_c", []string{"snake_case"}},
		{"%%", nil},
		{`\`, []string{`back\slash`}},
		{`k\s`, []string{`back\slash`}},
		{"été", []string{"ÉTÉ-key", "été-key"}},
		{"no-such-name", nil},
	}
	for _, tc := range cases {
		got := b.list(t, org, "q="+url.QueryEscape(tc.q))
		want := append([]string{}, tc.want...)
		sort.Strings(want)
		require.Equal(t, want, names(got.Keys), "q=%q", tc.q)
	}
	require.Len(t, b.list(t, org, "q=").Keys, 11, "an empty q matches every key")
}

func TestList200StatusFilterFollowsTheClockAndTheSevenDayRule(t *testing.T) {
	t.Parallel()
	b := setup(t) // moves the clock
	org := "acme"
	t0 := b.clock.Now()
	day := 24 * time.Hour
	at := func(d time.Duration) *time.Time { return ptr(t0.Add(d)) }
	for name, expires := range map[string]*time.Time{
		"never":         nil,
		"far":           at(30 * day),
		"edge-active":   at(7*day + 2*time.Hour + time.Second), // 7 days and 1 s left after the clock moves
		"edge-soon":     at(7*day + 2*time.Hour),               // exactly 7 days left
		"soon":          at(3 * day),
		"past":          at(time.Hour),
		"edge-expired":  at(2 * time.Hour), // expires exactly when the clock lands
		"revoked":       at(time.Hour),
		"revoked-never": nil,
	} {
		k := b.generate(t, org, name, expires)
		if strings.HasPrefix(name, "revoked") {
			b.revoke(t, org, k.ID)
		}
	}
	require.Empty(t, b.list(t, org, "status=expired").Keys, "nothing has expired yet")
	require.Equal(t, []string{"edge-expired", "past", "soon"}, names(b.list(t, org, "status=expires_soon").Keys))

	b.clock.Advance(2 * time.Hour)
	want := map[string][]string{
		"active":       {"edge-active", "far", "never"},
		"expires_soon": {"edge-soon", "soon"},
		"expired":      {"edge-expired", "past"},
		"revoked":      {"revoked", "revoked-never"},
	}
	total := 0
	for status, wantNames := range want {
		list := b.list(t, org, "status="+status)
		require.Equal(t, wantNames, names(list.Keys), status)
		for _, k := range list.Keys {
			require.Equal(t, status, k.Status, k.Name)
			res := b.admin(t, http.MethodGet, keyPath(org, k.ID), "")
			require.Equal(t, status, decode[keyBody](t, res).Status, "GET agrees with the list for %s", k.Name)
		}
		total += len(list.Keys)
	}
	require.Len(t, b.list(t, org, "").Keys, total, "the four statuses partition the keys")

	// Filters combine with search.
	require.Equal(t, []string{"edge-active", "edge-expired", "edge-soon"}, names(b.list(t, org, "q=EDGE").Keys))
	require.Equal(t, []string{"edge-soon"}, names(b.list(t, org, "q=edge&status=expires_soon").Keys))
}

func TestList200KeysetPaginationWalksEveryKeyOnceNewestFirst(t *testing.T) {
	t.Parallel()
	b := setup(t) // moves the clock
	org := "acme"
	// 55 keys; every 5 share a creation time, so the key id breaks ties.
	var created []keyBody
	for i := 0; i < 55; i++ {
		if i%5 == 0 {
			b.clock.Advance(time.Second)
		}
		created = append(created, b.generate(t, org, fmt.Sprintf("key-%c-%02d", 'a'+i%26, i), nil))
	}
	b.generate(t, org+"-b", "other-org", nil)

	// The default page is 50.
	first := b.list(t, org, "")
	require.Len(t, first.Keys, 50)
	require.NotNil(t, first.NextCursor)
	second := b.list(t, org, "cursor="+url.QueryEscape(*first.NextCursor))
	require.Len(t, second.Keys, 5)
	require.Nil(t, second.NextCursor, "the last page has no cursor")
	all := append(first.Keys, second.Keys...)

	// Newest first: by creation time, then by key id, both descending.
	for i := 1; i < len(all); i++ {
		prev, cur := all[i-1], all[i]
		prevAt, err := time.Parse(time.RFC3339Nano, prev.CreatedAt)
		require.NoError(t, err)
		curAt, err := time.Parse(time.RFC3339Nano, cur.CreatedAt)
		require.NoError(t, err)
		require.True(t, prevAt.After(curAt) || (prevAt.Equal(curAt) && prev.ID > cur.ID),
			"%d: %s/%s before %s/%s", i, prev.CreatedAt, prev.ID, cur.CreatedAt, cur.ID)
	}
	// ... which puts the last group generated first.
	seen := map[string]bool{}
	for _, k := range all {
		seen[k.ID] = true
	}
	require.Len(t, seen, 55, "no duplicates")
	for _, k := range created {
		require.True(t, seen[k.ID], "no gaps: %s", k.ID)
	}
	require.Equal(t, created[54].CreatedAt, all[0].CreatedAt)
	require.Equal(t, created[0].CreatedAt, all[54].CreatedAt)

	// Any page size walks the same order.
	for _, limit := range []string{"1", "2", "7", "54", "55", "200"} {
		var walked []keyBody
		query := "limit=" + limit
		for pages := 0; ; pages++ {
			require.Less(t, pages, 60, "the walk ends")
			page := b.list(t, org, query)
			walked = append(walked, page.Keys...)
			if page.NextCursor == nil {
				break
			}
			require.NotEmpty(t, page.Keys)
			query = "limit=" + limit + "&cursor=" + url.QueryEscape(*page.NextCursor)
		}
		require.Equal(t, all, walked, "limit=%s", limit)
	}

	// A key generated while a client walks appears on no later page: keyset
	// pagination neither repeats nor skips what was already shown.
	page := b.list(t, org, "limit=10")
	b.clock.Advance(time.Second)
	b.generate(t, org, "newest", nil)
	rest := b.list(t, org, "limit=200&cursor="+url.QueryEscape(*page.NextCursor))
	require.Equal(t, all[10:], rest.Keys)

	// Pagination under a search filter.
	var walked []string
	query := "q=key-a&limit=1"
	for {
		page := b.list(t, org, query)
		walked = append(walked, names(page.Keys)...)
		if page.NextCursor == nil {
			break
		}
		query = "q=key-a&limit=1&cursor=" + url.QueryEscape(*page.NextCursor)
	}
	require.Len(t, walked, 3) // i = 0, 26, 52
}

func list400RefusesBadQueries(t *testing.T, b *bundle, org string) {
	cases := map[string]struct{ query, detail string }{
		"unknown status":        {"status=deleted", "status must be one of"},
		"status in capitals":    {"status=ACTIVE", "status must be one of"},
		"limit 0":               {"limit=0", "limit"},
		"limit 201":             {"limit=201", "limit"},
		"limit negative":        {"limit=-1", "limit"},
		"limit abc":             {"limit=abc", "limit"},
		"limit fraction":        {"limit=1.5", "limit"},
		"cursor not base64":     {"cursor=" + url.QueryEscape("!!!"), "cursor"},
		"cursor garbage":        {"cursor=" + base64.RawURLEncoding.EncodeToString([]byte("garbage")), "cursor"},
		"cursor bad key id":     {"cursor=" + base64.RawURLEncoding.EncodeToString([]byte("1700000000000000.nokey")), "cursor"},
		"cursor bad time":       {"cursor=" + base64.RawURLEncoding.EncodeToString([]byte("soon.key_AAAAAAAAAAAAAAAAAAAA")), "cursor"},
		"q over 100 characters": {"q=" + strings.Repeat("q", 101), "q must be at most 100"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			res := b.admin(t, http.MethodGet, keysPath(org)+"?"+tc.query, "")
			requireDetail(t, res, http.StatusBadRequest, tc.detail)
		})
	}
	requireDetail(t, b.admin(t, http.MethodGet, keysPath("acme.corp"), ""), http.StatusBadRequest, "organization id")

	// The edges are accepted.
	b.list(t, org, "limit=1")
	b.list(t, org, "limit=200")
	b.list(t, org, "q="+strings.Repeat("é", 100))
}

func list401WithoutTheAdminToken(t *testing.T, b *bundle, org string) {
	b.generate(t, org, "secret-name", nil)
	for _, headers := range [][]header{nil, {hdr("Authorization", "Bearer wrong")}} {
		res := b.do(t, http.MethodGet, keysPath(org), "", headers...)
		requireProblem(t, res, http.StatusUnauthorized)
		require.NotEmpty(t, res.Header.Get("WWW-Authenticate"))
		require.NotContains(t, string(res.Body), "secret-name")
	}
}
