package projections

import (
	"testing"
	"time"

	"github.com/keyledger/keyledger/domain"
)

func TestListCursorRoundTrips(t *testing.T) {
	at := time.Date(2026, 3, 3, 9, 14, 0, 123456000, time.UTC)
	id := domain.NewKeyID()
	gotAt, gotID, err := parseListCursor(listCursor(at, id))
	if err != nil || !gotAt.Equal(at) || gotID != id {
		t.Fatalf("round trip: %v %q %v", gotAt, gotID, err)
	}
}

// FuzzParseListCursor: a cursor comes from the client, so any string must
// either parse or give an invalid error, never panic.
func FuzzParseListCursor(f *testing.F) {
	f.Add(listCursor(time.Unix(1700000000, 0), "key_0123456789ABCDEFGHIJ"))
	f.Add("")
	f.Add("not-base64!")
	f.Add("MTIzLmtleV8")
	f.Fuzz(func(t *testing.T, s string) {
		at, id, err := parseListCursor(s)
		if err != nil {
			if domain.ErrorCode(err) != domain.EInvalid {
				t.Fatalf("cursor %q: %v", s, err)
			}
			return
		}
		if !domain.ValidKeyID(id) {
			t.Fatalf("cursor %q parsed to a bad key id %q", s, id)
		}
		if again, id2, err := parseListCursor(listCursor(at, id)); err != nil || !again.Equal(at) || id2 != id {
			t.Fatalf("cursor %q does not round-trip", s)
		}
	})
}
