// Package api serves keyledger's HTTP API with chi: the management endpoints
// a portal backend calls with the admin token, /v1/verify for gateways, and
// the health and metrics endpoints. Handlers decode and validate, call the
// domain through the interfaces in Deps, and return an error to one adapter
// that renders every failure as RFC 9457 application/problem+json.
package api
