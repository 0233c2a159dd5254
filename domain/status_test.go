package domain

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestStatusFollowsTheSevenDayRuleAtItsBoundaries protects the statuses the
// portal shows: expired from the instant of expiry, expires_soon up to and
// including exactly 7 days ahead, active beyond that or with no expiry,
// revoked whatever the expiry.
func TestStatusFollowsTheSevenDayRuleAtItsBoundaries(t *testing.T) {
	t.Parallel()

	week := 7 * 24 * time.Hour
	cases := []struct {
		name    string
		revoked bool
		expires *time.Time
		want    Status
	}{
		{"no expiry is active", false, nil, StatusActive},
		{"expiry in the past is expired", false, timePtr(testNow.Add(-time.Hour)), StatusExpired},
		{"expiry exactly now is expired", false, timePtr(testNow), StatusExpired},
		{"expiry one nanosecond ahead expires soon", false, timePtr(testNow.Add(time.Nanosecond)), StatusExpiresSoon},
		{"expiry in three days expires soon", false, timePtr(testNow.Add(3 * 24 * time.Hour)), StatusExpiresSoon},
		{"expiry exactly 7 days ahead expires soon", false, timePtr(testNow.Add(week)), StatusExpiresSoon},
		{"expiry 7 days and one nanosecond ahead is active", false, timePtr(testNow.Add(week + time.Nanosecond)), StatusActive},
		{"expiry in a year is active", false, timePtr(testNow.AddDate(1, 0, 0)), StatusActive},
		{"expiry far beyond the Duration range is active", false, timePtr(testNow.AddDate(500, 0, 0)), StatusActive},
		{"expiry long ago is expired", false, timePtr(testNow.AddDate(-500, 0, 0)), StatusExpired},
		{"expiry 7 days ahead in another zone expires soon", false, timePtr(testNow.Add(week).In(time.FixedZone("X", -5*3600))), StatusExpiresSoon},
		{"revoked without expiry is revoked", true, nil, StatusRevoked},
		{"revoked with expiry passed is revoked", true, timePtr(testNow.Add(-time.Hour)), StatusRevoked},
		{"revoked with expiry exactly now is revoked", true, timePtr(testNow), StatusRevoked},
		{"revoked expiring soon is revoked", true, timePtr(testNow.Add(time.Hour)), StatusRevoked},
		{"revoked with far expiry is revoked", true, timePtr(testNow.AddDate(1, 0, 0)), StatusRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			require.Equal(t, tc.want, StatusOf(tc.revoked, tc.expires, testNow))

			// Key.Status derives the same status from the key's state.
			k := &Key{ExpiresAt: tc.expires}
			if tc.revoked {
				k.RevokedAt = timePtr(testNow.Add(-24 * time.Hour))
			}
			require.Equal(t, tc.want, k.Status(testNow))
		})
	}
}

// TestStatusChangesWithTheClockAlone protects "statuses are derived at read
// time": the same key moves from active to expires_soon to expired as only
// the time of reading advances.
func TestStatusChangesWithTheClockAlone(t *testing.T) {
	t.Parallel()

	expires := testNow.Add(10 * 24 * time.Hour)
	k := KeyFromEvents(withIDs(generatedEvent(testOrg, testSecret, "prod", &expires)))

	require.Equal(t, StatusActive, k.Status(testNow))
	require.Equal(t, StatusExpiresSoon, k.Status(expires.Add(-ExpiresSoonWindow)))
	require.Equal(t, StatusExpiresSoon, k.Status(expires.Add(-time.Nanosecond)))
	require.Equal(t, StatusExpired, k.Status(expires))
}

// TestParseStatusAcceptsExactlyTheFourStatuses protects the list's status
// filter: the four wire names and nothing else, case included.
func TestParseStatusAcceptsExactlyTheFourStatuses(t *testing.T) {
	t.Parallel()

	require.Equal(t, []Status{"active", "expires_soon", "expired", "revoked"}, Statuses)
	for _, s := range []string{"active", "expires_soon", "expired", "revoked"} {
		got, err := ParseStatus(s)
		require.NoError(t, err)
		require.Equal(t, Status(s), got)
	}

	for _, bad := range []string{"", "Active", "ACTIVE", "active ", " active", "expires-soon", "expiressoon", "all", "unknown", "revoked\n", "active,revoked"} {
		got, err := ParseStatus(bad)
		require.Error(t, err, "%q", bad)
		require.Equal(t, EInvalid, ErrorCode(err))
		require.Equal(t, Status(""), got)
	}
}
