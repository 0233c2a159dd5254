// Package keycache is the in-memory cache of keys that the gateway client and
// the service's own /v1/verify share: keys by the SHA-256 digest of their
// plaintext, kept honest by the ledger's notices.
//
// It holds two kinds of entries:
//
//   - Positives: keys an authority (the service, or the Postgres lookup view)
//     said were valid when it was asked. They are filled lazily, on a key's
//     first use (Fill); a key.generated notice adds nothing, since most keys
//     are never presented to a given gateway.
//   - Tombstones: keys known to be revoked, from a key.revoked notice or from
//     an authority's answer. Revocation is permanent, so a tombstone is never
//     dropped, never expires and is never evicted.
//
// What it guarantees:
//
//   - Once a revocation is applied (Apply), Get never again returns a
//     positive for that key, and Fill returns the tombstone instead of the
//     positive it was given. A lookup that was in flight when the notice
//     arrived, and that read the key while it was still valid, therefore
//     ends revoked: revocations are recorded as tombstones, not as deletes
//     that a late Fill could undo.
//   - Get returns a positive only while current() reports that the notices
//     are current (for the gateway: the follower has applied everything the
//     relay had published within the staleness bound). Otherwise it reports
//     a miss, and the caller asks the authority again. Tombstones are served
//     whatever current() says.
//   - After Gap (notices were lost), every positive is dropped, and a lookup
//     that began before the gap (FillAt with an older Generation) does not
//     store its answer: a positive is only kept if no notice about it can
//     have been missed since it was read.
//   - Notices are applied idempotently: a key.revoked whose stream version
//     is not newer than the tombstone already held changes nothing, so a
//     republished duplicate is harmless. A revocation always replaces a
//     positive, whatever the versions.
//
// What it does not do:
//
//   - Expiry: entries carry the key's expiry, and callers derive the status
//     with the domain rules (Key.Status(now)), so a key expires on the local
//     clock, cached or not.
//   - Negative caching of unknown keys: an unknown key is not cached, so a
//     key generated a moment ago is found on its first use.
//   - Bounding tombstones: MaxEntries bounds positives only (evicting
//     arbitrary ones when full). Tombstones stay for the life of the
//     process: a few hundred bytes each (the key's fields, its digest and
//     the map slot), so a million revocations seen by one process cost in
//     the order of 400 MB. A restart starts empty again; the authority
//     remembers every revocation, and the cache learns them back lazily.
//
// Entries are shared *domain.Key values: callers must not modify them.
package keycache
