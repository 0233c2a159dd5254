// Package projections keeps the two views that the API reads: the key list
// (search by name, filter by status, newest first) and the lookup view (key
// digest to key state, for verification).
//
// Each view is a Projector with one apply step per event type. Both run
// inline, in the transaction that appends their events, so that a command's
// effect is visible to the next read (read-your-writes). Neither holds
// anything the event log does not: Rebuild makes both again from the log.
package projections
