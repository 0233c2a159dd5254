// Package domain holds keyledger's model of an API key: the key aggregate, the
// commands that change it, the events it records, the statuses derived from it,
// the key format and the domain errors.
//
// It imports only the standard library, so that every rule about keys can be
// read and tested without Postgres, NATS or HTTP. Storage and transport are
// reached through the small interfaces declared here (EventStore, Clock) and
// implemented in eventstore/ and cmd/keyledger.
package domain
