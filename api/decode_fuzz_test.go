package api

import (
	"bytes"
	"net/http/httptest"
	"testing"

	"github.com/keyledger/keyledger/domain"
)

// FuzzDecodeGenerateBody feeds arbitrary bodies to the generate decoder: it
// must never panic, and must either decode or fail with a client error.
func FuzzDecodeGenerateBody(f *testing.F) {
	for _, seed := range []string{
		`{"name":"production-key","expires_at":null}`,
		`{"name":"k","expires_at":"2030-01-01T00:00:00Z"}`,
		`{"name":1}`, `{"nom":"x"}`, `{}`, `[]`, `null`, ``, `{"name":"a"}{"name":"b"}`, `{"name":"\u0000"}`,
		string(bytes.Repeat([]byte(`[`), 10000)),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/v1/orgs/acme/keys", bytes.NewReader(body))
		var req generateRequest
		err := decodeBody(httptest.NewRecorder(), r, &req, false)
		if err == nil {
			return
		}
		switch code := domain.ErrorCode(err); code {
		case domain.EInvalid, eTooLarge:
		default:
			t.Fatalf("body %q: error code %q, want a client error: %v", body, code, err)
		}
	})
}
