package domain

import "time"

// Status is derived at read time from a key's state and the current time; it
// is never stored, because "expires soon" and "expired" change with the clock
// alone.
type Status string

const (
	StatusActive      Status = "active"
	StatusExpiresSoon Status = "expires_soon"
	StatusExpired     Status = "expired"
	StatusRevoked     Status = "revoked"
)

// ExpiresSoonWindow is how far ahead an expiry makes a key "expires_soon".
const ExpiresSoonWindow = 7 * 24 * time.Hour

// Statuses lists every status, in the order the portal shows them.
var Statuses = []Status{StatusActive, StatusExpiresSoon, StatusExpired, StatusRevoked}

// ParseStatus reads a status filter.
func ParseStatus(s string) (Status, error) {
	for _, st := range Statuses {
		if string(st) == s {
			return st, nil
		}
	}
	return "", Errorf(EInvalid, "status must be one of active, expires_soon, expired, revoked")
}

// StatusOf derives the status of a key from whether it is revoked and when it
// expires, at time now.
func StatusOf(revoked bool, expiresAt *time.Time, now time.Time) Status {
	switch {
	case revoked:
		return StatusRevoked
	case expiresAt == nil:
		return StatusActive
	case !expiresAt.After(now):
		return StatusExpired
	case expiresAt.Sub(now) <= ExpiresSoonWindow:
		return StatusExpiresSoon
	default:
		return StatusActive
	}
}

// Status derives the key's status at time now.
func (k *Key) Status(now time.Time) Status { return StatusOf(k.RevokedAt != nil, k.ExpiresAt, now) }
