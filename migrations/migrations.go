// Package migrations holds keyledger's schema as numbered SQL files, embedded
// in the binary. eventstore.Migrate applies them on start with goose.
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
