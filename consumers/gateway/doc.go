// Package gateway is the Go client an API gateway imports to check the keys
// its callers present: Verify(ctx, apiKey, orgID) answers from a local cache
// (package keycache) kept current by the ledger's notices over NATS
// JetStream (package notices), and asks the keyledger service on a miss.
//
// A gateway builds a Client with New, runs Run in the background, waits for
// Ready, then calls Verify on every request:
//
//	c, err := gateway.New(gateway.Config{ServiceURL: "http://keyledger:8080", NATSURL: "nats://nats:4222"})
//	go c.Run(ctx)
//	<-c.Ready()
//	v, err := c.Verify(ctx, r.Header.Get("X-Api-Key"), r.Header.Get("X-Organization-Id"))
//	if err != nil || !v.Valid() { /* refuse */ }
//
// # Guarantees
//
//   - Local refusal of garbage: a missing header, a malformed key (wrong
//     prefix, length, alphabet or checksum) or a malformed organization id
//     is refused with the same reasons as the service's /v1/verify, without
//     a network call.
//   - Revocation: once the notice of a key's revocation has been applied,
//     every later Verify of that key fails with reason revoked, whichever
//     organization it is presented with. This includes a lookup of that key
//     that was in flight when the notice arrived and that read the key while
//     it was still valid: revocations are kept as tombstones that a late
//     answer cannot overwrite, and the late answer is replaced by the
//     tombstone. A revoked answer from the service is kept as a tombstone
//     too. Tombstones are never evicted.
//   - Expiry is enforced locally: a cached key's status is derived from its
//     expiry and the local clock on every Verify, so it stops being valid
//     when it expires without any notice or lookup.
//   - No missed notice: the follower reads the stream in order through an
//     ordered consumer that resumes after a disconnect from the last notice
//     applied; a gap in the stream (purged past the client) drops every
//     cached positive. Answers from the service are cached only from the
//     moment the follower has subscribed (Ready), so no key is cached before
//     the notices about it can be seen.
//   - Staleness fails closed: the relay announces a heartbeat about once a
//     second; the client is current while it has applied every notice that
//     a heartbeat within StaleAfter (default 5 s) vouched for. When it is not
//     current, cached positives are not trusted: each Verify asks the
//     service again, and when the service cannot answer (unreachable, 5xx,
//     timeout, unexpected reply) Verify returns an error beside an invalid
//     Verification, so a caller that ignores the error still refuses.
//
// # What is not guaranteed
//
//   - Propagation is not instantaneous: between the commit of a revocation
//     and its notice being applied here (relay lag plus NATS delivery;
//     milliseconds normally, at most StaleAfter plus the relay's lag while
//     the client believes it is current), a cached positive is still
//     accepted. Reading the service on every request is the only stronger
//     guarantee.
//   - The answer to one Verify that was already returned is not recalled.
//   - Before Ready, and while stale, every request costs a call to the
//     service; concurrent misses of one key are not coalesced.
//   - An unknown key is not cached: each attempt with it asks the service.
//   - The client trusts the service and NATS it is pointed at; it does not
//     authenticate them beyond what the URLs and connection options give.
package gateway
