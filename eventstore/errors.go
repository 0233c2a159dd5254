package eventstore

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keyledger/keyledger/domain"
)

// Postgres error codes that keyledger reads.
const (
	codeUniqueViolation  = "23505"
	codeVersionMismatch  = "KL409" // raised by expect_stream_version (migration 00003)
	codeLockNotAvailable = "55P03" // a lock wait outlasted lock_timeout
)

// Unavailable translates a driver error that means Postgres cannot be reached
// (a refused or broken connection, a connection that ends in the middle of a
// reply, a server shutting down, a timeout) into a domain error with code
// EUnavailable, and returns any other error as it is.
// Callers in other packages that talk to Postgres use it too, so that one
// table decides what a 503 is.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) { // no connection, whatever the server said (a bad login, a missing database)
		return wrapUnavailable(err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC" { // the server ended the session
			return wrapUnavailable(err)
		}
		switch pgErr.Code[:2] {
		case "08", "53", "57": // connection exception, insufficient resources, operator intervention
			return wrapUnavailable(err)
		}
		return err
	}
	var netErr net.Error
	if errors.As(err, &netErr) || pgconn.Timeout(err) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return wrapUnavailable(err)
	}
	return err
}

// unavailableError carries the domain error for the client and the driver
// error for the log.
type unavailableError struct {
	domainErr *domain.Error
	cause     error
}

func (e unavailableError) Error() string   { return e.domainErr.Error() + ": " + e.cause.Error() }
func (e unavailableError) Unwrap() []error { return []error{e.domainErr, e.cause} }

func wrapUnavailable(cause error) error {
	return unavailableError{domain.Errorf(domain.EUnavailable, "the database is unavailable; retry later"), cause}
}
