package domain

import (
	"context"
	"time"
)

// Page sizes of the key list.
const (
	DefaultPageSize = 50
	MaxPageSize     = 200
)

// KeyQuery selects a page of an organization's keys.
type KeyQuery struct {
	OrgID  string
	Search string    // case-insensitive substring of the name; empty for all
	Status Status    // empty for all
	Limit  int       // 1 to MaxPageSize
	Cursor string    // the previous page's NextCursor; empty for the first page
	Now    time.Time // the time statuses are derived at
}

// KeyPage is one page of the key list, newest first.
type KeyPage struct {
	Keys       []*Key
	NextCursor string // empty on the last page
}

// KeyReader reads the views of keys.
type KeyReader interface {
	GetKey(ctx context.Context, orgID, keyID string) (*Key, error)
	ListKeys(ctx context.Context, q KeyQuery) (KeyPage, error)
}
