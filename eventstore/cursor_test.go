package eventstore_test

import (
	"encoding/base64"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

func TestCursorStringRoundTrips(t *testing.T) {
	t.Parallel()
	for _, c := range []eventstore.Cursor{
		{},
		{Xid: 1, Position: 1},
		{Xid: 731, Position: 2},
		{Xid: 1 << 40, Position: 12345678},
		{Xid: math.MaxUint64, Position: math.MaxInt64},
	} {
		s := c.String()
		require.NotContains(t, s, "=", "the token needs no escaping in a URL")
		require.False(t, strings.ContainsAny(s, "+/&?# "), "the token needs no escaping in a URL: %q", s)
		got, err := eventstore.ParseCursor(s)
		require.NoError(t, err, s)
		require.Equal(t, c, got)
	}
}

func TestParseCursorRefusesGarbageAsInvalid(t *testing.T) {
	t.Parallel()
	enc := base64.RawURLEncoding.EncodeToString
	for _, s := range []string{
		"",
		"!!",
		"not a cursor",
		"MC4w==", // padded
		base64.StdEncoding.EncodeToString([]byte("1.2?")),
		enc([]byte("12")),
		enc([]byte(".")),
		enc([]byte("1.")),
		enc([]byte(".1")),
		enc([]byte("x.1")),
		enc([]byte("1.x")),
		enc([]byte("-1.2")),
		enc([]byte("1.-2")),
		enc([]byte("1.2.3")),
		enc([]byte(" 1.2")),
		enc([]byte("18446744073709551616.0")), // xid overflows uint64
		enc([]byte("1.9223372036854775808")),  // position overflows int64
	} {
		_, err := eventstore.ParseCursor(s)
		require.Error(t, err, "%q parsed", s)
		var de *domain.Error
		require.True(t, errors.As(err, &de), "%q: %v is not a domain error", s, err)
		require.Equal(t, domain.EInvalid, domain.ErrorCode(err), s)
	}
}

// TestOrgEventsIsTheOrganizationsLogInLedgerOrder protects tenant isolation
// of the audit log and its pagination: OrgEvents returns only the
// organization's events, in ledger order, a page at a time, and a client
// that carries the cursor as a token between pages misses nothing.
func TestOrgEventsIsTheOrganizationsLogInLedgerOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	// Interleave two organizations, with one- and two-event appends.
	for i := range 7 {
		for _, org := range []string{"org-a", "org-b"} {
			keyID := domain.NewKeyID()
			events := []domain.Event{generated(org, keyID, time.Now())}
			if i%2 == 0 {
				events = append(events, revoked(org, keyID, 2, time.Now()))
			}
			_, err := b.store.Append(ctx, 0, events, nil)
			require.NoError(t, err)
		}
	}

	var want []string
	rows, err := b.pool.Query(ctx, `SELECT id::text FROM events WHERE org_id = 'org-a' ORDER BY events.transaction_id, events.position`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		want = append(want, id)
	}
	require.NoError(t, rows.Err())
	require.Len(t, want, 11)

	var got []string
	token := eventstore.Cursor{}.String()
	pages := 0
	waitFor(t, "org-a's whole log", func() bool {
		for {
			after, err := eventstore.ParseCursor(token)
			require.NoError(t, err)
			events, next, err := b.store.OrgEvents(ctx, "org-a", after, 3)
			require.NoError(t, err)
			require.LessOrEqual(t, len(events), 3)
			if len(events) == 0 {
				require.Equal(t, after, next)
				return len(got) == len(want)
			}
			pages++
			for _, e := range events {
				require.Equal(t, "org-a", e.OrgID, "another organization's event in the log")
				got = append(got, e.ID)
			}
			token = next.String()
		}
	})
	require.Equal(t, want, got)
	require.GreaterOrEqual(t, pages, 4)

	events, next, err := b.store.OrgEvents(ctx, "org-unknown", eventstore.Cursor{}, 100)
	require.NoError(t, err)
	require.Empty(t, events)
	require.Equal(t, eventstore.Cursor{}, next)
}
