package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/keyledger/keyledger/domain"
)

// MaxBodyBytes caps every request body.
const MaxBodyBytes = 64 << 10

// decodeBody reads one JSON object into v, whatever the Content-Type says
// (curl sends form encoding unless told otherwise), refusing unknown fields, trailing
// data and bodies over MaxBodyBytes. An empty body decodes to v's zero value
// when allowEmpty is set.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return domain.Errorf(eTooLarge, "the request body is over %d bytes", MaxBodyBytes)
	case errors.Is(err, io.EOF) && allowEmpty:
		return nil
	case errors.Is(err, io.EOF):
		return domain.Errorf(domain.EInvalid, "the request body is empty; a JSON object is expected")
	case err != nil:
		return domain.Errorf(domain.EInvalid, "malformed JSON: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if errors.As(err, &tooLarge) {
			return domain.Errorf(eTooLarge, "the request body is over %d bytes", MaxBodyBytes)
		}
		return domain.Errorf(domain.EInvalid, "malformed JSON: the body must hold one JSON object")
	}
	return nil
}

// jsonProblem describes a decoding error without echoing the body.
func jsonProblem(err error) string {
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return "syntax error"
	case errors.As(err, &typeErr):
		if typeErr.Field != "" {
			return "field " + typeErr.Field + " has the wrong type"
		}
		return "a JSON object is expected"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of input"
	}
	return "cannot decode the body"
}
