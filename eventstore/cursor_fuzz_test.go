package eventstore

import (
	"testing"

	"github.com/keyledger/keyledger/domain"
)

// FuzzParseCursor: an audit-log cursor comes from the client, so any string
// must either parse or give an invalid error, never panic.
func FuzzParseCursor(f *testing.F) {
	f.Add(Cursor{Xid: 731, Position: 2}.String())
	f.Add("")
	f.Add("MC4w")
	f.Add("!!")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCursor(s)
		if err != nil {
			if domain.ErrorCode(err) != domain.EInvalid {
				t.Fatalf("cursor %q: %v", s, err)
			}
			return
		}
		if again, err := ParseCursor(c.String()); err != nil || again != c {
			t.Fatalf("cursor %q does not round-trip: %v %v", s, again, err)
		}
	})
}
