package audit_test

import (
	"encoding/json"
	"testing"
)

func BenchmarkLeafHash(b *testing.B) {
	l := sampleLeaf()
	l.Data = json.RawMessage(`{"key_id": "key_0123456789abcdefABCD", "name": "production-key-123", "key_hash": "07171d677628acbf6b077afdc2190717eaf83490646bf0232200de7074158e0e", "masked": "...********abcd1234", "expires_at": null}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Hash(); err != nil {
			b.Fatal(err)
		}
	}
}
