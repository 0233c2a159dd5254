package api_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keyledger/keyledger/domain"
)

// race starts n requests at once and returns their responses.
func race(t *testing.T, n int, request func() (*response, error)) []*response {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	responses := make([]*response, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			responses[i], errs[i] = request()
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	return responses
}

func TestConcurrentGeneratesWithOneIdempotencyKeyCreateExactlyOneKey(t *testing.T) {
	t.Parallel()
	b := setup(t, withConns(20))
	org := "acme"
	body := genBody("deploy-bot", nil)

	responses := race(t, 50, func() (*response, error) {
		return b.send(http.MethodPost, keysPath(org), body, bearer, hdr("Idempotency-Key", "deploy-42"))
	})

	created, replayed := 0, 0
	ids := map[string]bool{}
	var secret string
	for _, res := range responses {
		switch res.Status {
		case http.StatusCreated:
			created++
			secret = decode[keyBody](t, res).Key
		case http.StatusOK:
			replayed++
			require.Equal(t, "true", res.Header.Get("Idempotent-Replayed"))
			require.NotContains(t, fields(t, res), "key")
		default:
			t.Fatalf("unexpected %d: %s", res.Status, res.Body)
		}
		ids[decode[keyBody](t, res).ID] = true
	}
	require.Equal(t, 1, created, "exactly one 201")
	require.Equal(t, 49, replayed, "every other request is a replay")
	require.Len(t, ids, 1, "all answers name the same key")

	list := b.list(t, org, "")
	require.Len(t, list.Keys, 1)
	require.True(t, ids[list.Keys[0].ID])
	require.Equal(t, 1, b.eventCount(t, org, domain.TypeKeyGenerated))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM idempotency_keys`))
	requireJSON(t, b.verify(t, secret, org), http.StatusOK)
}

func TestConcurrency(t *testing.T) {
	t.Parallel()
	runShared(t, setup(t),
		shared{"racing revokes of one key all succeed with one event", concurrentRevokesOfOneKeyAllSucceedWithOneEvent},
		shared{"concurrent generates without Idempotency-Key each create a key", concurrentGeneratesWithoutIdempotencyKeyEachCreateAKey},
		shared{"read your writes: list after generate, verify after revoke", readYourWritesListAfterGenerateVerifyAfterRevoke},
	)
}

func concurrentRevokesOfOneKeyAllSucceedWithOneEvent(t *testing.T, b *bundle, org string) {
	k := b.generate(t, org, "k", nil)

	responses := race(t, 20, func() (*response, error) {
		return b.send(http.MethodPost, keyPath(org, k.ID)+"/revoke", `{"reason":"incident"}`, bearer)
	})
	revokedAt := map[string]bool{}
	for _, res := range responses {
		requireJSON(t, res, http.StatusOK)
		got := decode[keyBody](t, res)
		require.Equal(t, "revoked", got.Status)
		require.NotNil(t, got.RevokedAt)
		revokedAt[*got.RevokedAt] = true
	}
	require.Len(t, revokedAt, 1, "every answer shows the one revocation")
	require.Equal(t, 1, b.eventCount(t, org, domain.TypeKeyRevoked))
	require.Len(t, b.keyEvents(t, org, k.ID), 2)
	requireRefused(t, b.verify(t, k.Key, org), "revoked")
}

func concurrentGeneratesWithoutIdempotencyKeyEachCreateAKey(t *testing.T, b *bundle, org string) {
	responses := race(t, 20, func() (*response, error) {
		return b.send(http.MethodPost, keysPath(org), genBody("same-name", nil), bearer)
	})
	ids := map[string]bool{}
	for _, res := range responses {
		requireJSON(t, res, http.StatusCreated)
		ids[decode[keyBody](t, res).ID] = true
	}
	require.Len(t, ids, 20)
	require.Len(t, b.list(t, org, "").Keys, 20)
}

func readYourWritesListAfterGenerateVerifyAfterRevoke(t *testing.T, b *bundle, org string) {
	for i := 0; i < 50; i++ {
		name := fmt.Sprintf("ryw-%02d", i)
		k := b.generate(t, org, name, nil)

		list := b.list(t, org, "q="+name)
		require.Len(t, list.Keys, 1, "the key is listed as soon as generate returns")
		require.Equal(t, k.ID, list.Keys[0].ID)
		requireJSON(t, b.verify(t, k.Key, org), http.StatusOK)

		b.revoke(t, org, k.ID)
		requireRefused(t, b.verify(t, k.Key, org), "revoked")
		require.Equal(t, "revoked", b.list(t, org, "q="+name).Keys[0].Status)
	}
}
