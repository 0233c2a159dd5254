package domain

import (
	"errors"
	"fmt"
)

// Error codes are the only failure kinds a caller needs to tell apart. The api
// package maps each one to an HTTP status in one table.
const (
	EInvalid      = "invalid"      // the request is malformed or breaks a rule
	ENotFound     = "not_found"    // the thing does not exist, or belongs to another organization
	EConflict     = "conflict"     // a concurrent command won a race on the same stream
	EUnauthorized = "unauthorized" // a missing or wrong credential
	EMismatch     = "mismatch"     // an idempotency key reused with another request
	EUnavailable  = "unavailable"  // a dependency (Postgres, NATS) cannot be reached
	EInternal     = "internal"     // a bug or an unexpected failure; its detail is never shown
)

// Error is keyledger's one error type. Code says what kind of failure it is;
// Message is safe to show to the client (it never holds a key or a token).
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("keyledger: %s: %s", e.Code, e.Message) }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EInternal for
// any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// ErrorMessage returns the client-safe message of err: the message of its
// *Error, or a generic text for an internal error whose detail must stay in
// the logs.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// ErrConflict is returned by an EventStore when the expected version of a
// stream no longer holds, whether the version check or the unique constraint
// on (stream, version) caught it.
var ErrConflict = &Error{Code: EConflict, Message: "the key was changed by a concurrent request; retry"}
