package projections

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/eventstore"
)

// Views reads the list and lookup views.
type Views struct {
	pool    *pgxpool.Pool
	lookups *lookupBatcher
	walk    int // listWalk if 0; tests set it through SetListWalk
}

// NewViews returns a reader of the views in pool's database.
func NewViews(pool *pgxpool.Pool) *Views {
	return &Views{pool: pool, lookups: newLookupBatcher(pool)}
}

var (
	_ domain.KeyLookup = (*Views)(nil)
	_ domain.KeyReader = (*Views)(nil)
)

const keyColumns = `org_id, key_id, name, masked, key_hash, created_at, expires_at, revoked_at, revoke_reason, version`

// listWalk is how many of an organization's keys, newest first from the
// cursor, a search tests one by one before it looks its term up (see
// ListKeys).
const listWalk = 5000

// ListKeys returns a page of keys, newest first, by keyset pagination on
// (created_at, key_id).
//
// A search (a case-insensitive substring of the name) has two ways to a
// page, and which one is fast depends on how many of the organization's keys
// match. Walking the organization's keys newest first stops after a page of
// matches: fast for a common term, slow for a rare one. Looking the term up
// in a trigram index fetches every match and sorts them: fast for a rare
// term, slow for a common one. Left to choose, Postgres goes by its estimate
// of how often the substring occurs, which is often far off (77 names for
// "-42", which 13,000 of a million hold), and a wrong choice cost 13 to 110
// ms a page (warm and cold cache) in an organization of 100,000 keys. So a
// search takes up to two statements:
//
//  1. The first walks the listWalk newest keys after the cursor in
//     key_list_newest, which holds the name and the status columns: each key
//     is tested in the index alone (an index-only scan, about 0.4 µs a key,
//     on pages that vacuum has marked all-visible; on others Postgres also
//     reads the row), and only the page's keys are read from the table.
//     Whatever the estimate, a term that one key in a hundred matches (with
//     the status) fills a page of 50 here, in about 2 ms. Its plan is the
//     same for any values, so it runs with its generic plan
//     (eventstore.QueryGeneric), not planned again at each call: a common
//     term's page took 0.4 to 0.5 ms so, against 0.65 to 0.85 ms planned.
//  2. If the page is not full and the walk did not reach the organization's
//     oldest key, the rest of the page comes from the keys older than the
//     last one walked, by the one query, planned for this call's values. The
//     term is rare among the newest keys; if Postgres looks it up,
//     key_list_org_lname, whose trigram entries carry the organization, finds
//     the organization's matches without visiting any other's.
//
// The page is the one the single query would return: the first statement
// returns the first matches among the keys it walked, in list order, and the
// second continues strictly after the last key walked, which the first
// returns from its own snapshot (a key created in between cannot move it).
// The next cursor is the page's last key, as always. A list without a search
// takes the one query: a status filter alone has no such choice to get wrong.
func (v *Views) ListKeys(ctx context.Context, q domain.KeyQuery) (domain.KeyPage, error) {
	if q.Limit < 1 || q.Limit > domain.MaxPageSize {
		return domain.KeyPage{}, domain.Errorf(domain.EInvalid, "limit must be between 1 and %d", domain.MaxPageSize)
	}
	if _, err := listConditions(q, &sqlArgs{}); err != nil {
		return domain.KeyPage{}, err
	}
	var after *listPos
	if q.Cursor != "" {
		at, id, err := parseListCursor(q.Cursor)
		if err != nil {
			return domain.KeyPage{}, err
		}
		after = &listPos{at, id}
	}
	want := q.Limit + 1 // one more tells whether there is a next page
	var keys []*domain.Key
	var err error
	if q.Search == "" {
		keys, err = v.listAfter(ctx, q, after, want)
	} else {
		var last *listPos
		keys, last, err = v.listWalk(ctx, q, after, want)
		if err == nil && len(keys) < want && last != nil {
			var more []*domain.Key
			more, err = v.listAfter(ctx, q, last, want-len(keys))
			keys = append(keys, more...)
		}
	}
	if err != nil {
		return domain.KeyPage{}, fmt.Errorf("list keys: %w", eventstore.Unavailable(err))
	}
	page := domain.KeyPage{Keys: keys}
	if len(keys) > q.Limit {
		page.Keys = keys[:q.Limit]
		last := page.Keys[q.Limit-1]
		page.NextCursor = listCursor(last.CreatedAt, last.ID)
	}
	return page, nil
}

// listPos is a key's place in the list.
type listPos struct {
	at time.Time
	id string
}

// sqlArgs holds the values of a statement's parameters.
type sqlArgs []any

// add appends a value and returns its placeholder.
func (a *sqlArgs) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// listConditions returns the conditions of q's search and status, on
// columns that key_list_newest holds, adding their values to a. The search
// is lower(name) LIKE lower(pattern), which is what ILIKE does in a
// multibyte encoding (Postgres lowers both sides, then matches), and which
// key_list_org_lname serves. It relies on name having the database's
// default collation (lower($n) lowers with it), as the migrations leave it.
func listConditions(q domain.KeyQuery, a *sqlArgs) ([]string, error) {
	return conditions(q, a, func(pattern string) string { return "lower(name) LIKE lower(" + pattern + ")" })
}

// walkConditions are listConditions for a walk run with its generic plan,
// where lower($n) would be computed again for every key walked: the pattern
// is lowered once, by a subquery (an InitPlan). ILIKE, which lowers the
// pattern again for every key, took 4.1 ms for 5,000 names, this 1.8 ms. The
// trigram index cannot serve it; a walk does not need it.
func walkConditions(q domain.KeyQuery, a *sqlArgs) ([]string, error) {
	return conditions(q, a, func(pattern string) string { return "lower(name) LIKE (SELECT lower(" + pattern + "))" })
}

// conditions writes the search with like, given the pattern's placeholder.
func conditions(q domain.KeyQuery, a *sqlArgs, like func(pattern string) string) ([]string, error) {
	var c []string
	if q.Search != "" {
		c = append(c, like(a.add("%"+escapeLike(q.Search)+"%")))
	}
	switch q.Status {
	case "":
	case domain.StatusRevoked:
		c = append(c, "revoked_at IS NOT NULL")
	case domain.StatusExpired:
		c = append(c, "revoked_at IS NULL", "expires_at <= "+a.add(q.Now))
	case domain.StatusExpiresSoon:
		c = append(c, "revoked_at IS NULL", "expires_at > "+a.add(q.Now),
			"expires_at <= "+a.add(q.Now.Add(domain.ExpiresSoonWindow)))
	case domain.StatusActive:
		c = append(c, "revoked_at IS NULL",
			"(expires_at IS NULL OR expires_at > "+a.add(q.Now.Add(domain.ExpiresSoonWindow))+")")
	default:
		return nil, domain.Errorf(domain.EInvalid, "unknown status %q", q.Status)
	}
	return c, nil
}

// listRange is the condition on key_list for the organization's ($1) keys
// after p, or all of them if p is nil.
func listRange(a *sqlArgs, p *listPos) string {
	w := "org_id = $1"
	if p != nil {
		w += " AND (created_at, key_id) < (" + a.add(p.at) + ", " + a.add(p.id) + ")"
	}
	return w
}

// joinedKeyColumns are keyColumns read from key_list k.
var joinedKeyColumns = "k." + strings.ReplaceAll(keyColumns, ", ", ", k.")

// query runs a statement of the list, planned for its call's values, in one
// round trip (an unnamed statement with a cached description). A cached
// prepared statement may switch to a generic plan after five executions,
// and a search's lookup must be planned for its term: only the term tells
// whether looking it up in key_list_org_lname beats walking key_list_newest
// (the generic plan walks, which takes the whole organization for a term no
// key holds).
func (v *Views) query(ctx context.Context, sql string, a sqlArgs) (pgx.Rows, error) {
	return v.pool.Query(ctx, sql, append([]any{pgx.QueryExecModeCacheDescribe}, a...)...)
}

// listAfter returns up to n of the organization's keys that match q, after
// p if set, newest first. With a filter, the keys are chosen from
// key_list_newest (an index-only scan, when Postgres walks it) and only
// theirs are read from the table.
func (v *Views) listAfter(ctx context.Context, q domain.KeyQuery, p *listPos, n int) ([]*domain.Key, error) {
	a := sqlArgs{q.OrgID}
	conds, err := listConditions(q, &a)
	if err != nil {
		return nil, err
	}
	where := listRange(&a, p)
	var sql string
	if len(conds) == 0 {
		sql = `SELECT ` + keyColumns + ` FROM key_list WHERE ` + where + `
			ORDER BY created_at DESC, key_id DESC LIMIT ` + a.add(n)
	} else {
		sql = `SELECT ` + joinedKeyColumns + ` FROM (
			SELECT key_id, created_at FROM key_list
			WHERE ` + where + ` AND ` + strings.Join(conds, " AND ") + `
			ORDER BY created_at DESC, key_id DESC LIMIT ` + a.add(n) + `) p
		JOIN key_list k ON k.org_id = $1 AND k.key_id = p.key_id
		ORDER BY p.created_at DESC, p.key_id DESC`
	}
	rows, err := v.query(ctx, sql, a)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanKey)
}

// listWalk returns up to n of the organization's keys that match q among
// the listWalk keys after p (or the newest ones if p is nil), newest first,
// and the last key it walked if it walked that many and found fewer than n.
func (v *Views) listWalk(ctx context.Context, q domain.KeyQuery, p *listPos, n int) ([]*domain.Key, *listPos, error) {
	a := sqlArgs{q.OrgID}
	conds, err := walkConditions(q, &a)
	if err != nil {
		return nil, nil, err
	}
	walk := listWalk
	if v.walk > 0 {
		walk = v.walk
	}
	where := listRange(&a, p)
	w, m := a.add(walk), a.add(n)
	// The first branch is the walk. The second, the last key walked (hit is
	// false), runs only if the first returns fewer than n keys: the LIMIT
	// stops the Append before it otherwise.
	sql := `SELECT ` + joinedKeyColumns + `, p.hit FROM (
		(SELECT key_id, created_at, true AS hit FROM (
			SELECT key_id, created_at, name, revoked_at, expires_at FROM key_list WHERE ` + where + `
			ORDER BY created_at DESC, key_id DESC LIMIT ` + w + `) walked
		WHERE ` + strings.Join(conds, " AND ") + `
		ORDER BY created_at DESC, key_id DESC LIMIT ` + m + `)
		UNION ALL
		(SELECT key_id, created_at, false FROM key_list WHERE ` + where + `
		ORDER BY created_at DESC, key_id DESC OFFSET ` + w + ` - 1 LIMIT 1)
		LIMIT ` + m + `) p
	JOIN key_list k ON k.org_id = $1 AND k.key_id = p.key_id
	ORDER BY p.created_at DESC, p.key_id DESC`
	var keys []*domain.Key
	var last *listPos
	err = eventstore.QueryGeneric(ctx, v.pool, sql, a, func(rows pgx.Rows) error {
		for rows.Next() {
			var hit bool
			k, err := scanKeyAnd(rows, &hit)
			if err != nil {
				return err
			}
			if hit {
				keys = append(keys, k)
			} else {
				last = &listPos{k.CreatedAt, k.ID}
			}
		}
		return rows.Err()
	})
	return keys, last, err
}

// GetKey returns one key of an organization, or a not_found error.
func (v *Views) GetKey(ctx context.Context, orgID, keyID string) (*domain.Key, error) {
	rows, err := v.pool.Query(ctx, `SELECT `+keyColumns+` FROM key_list WHERE org_id = $1 AND key_id = $2`, orgID, keyID)
	if err != nil {
		return nil, fmt.Errorf("get key: %w", eventstore.Unavailable(err))
	}
	k, err := pgx.CollectExactlyOneRow(rows, scanKey)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, domain.Errorf(domain.ENotFound, "key not found")
	}
	if err != nil {
		return nil, fmt.Errorf("get key: %w", eventstore.Unavailable(err))
	}
	return k, nil
}

func scanKey(row pgx.CollectableRow) (*domain.Key, error) { return scanKeyAnd(row) }

// scanKeyAnd reads a row of keyColumns, then of the columns more are for.
func scanKeyAnd(row pgx.Row, more ...any) (*domain.Key, error) {
	k := &domain.Key{}
	var h []byte
	err := row.Scan(append([]any{&k.OrgID, &k.ID, &k.Name, &k.Masked, &h, &k.CreatedAt, &k.ExpiresAt, &k.RevokedAt, &k.RevokeReason, &k.Version}, more...)...)
	copy(k.Hash[:], h)
	normalize(k)
	return k, err
}

// normalize puts the times read from Postgres in UTC, as the domain keeps them.
func normalize(k *domain.Key) {
	k.CreatedAt = k.CreatedAt.UTC()
	for _, t := range []**time.Time{&k.ExpiresAt, &k.RevokedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
}

// likeEscaper escapes LIKE's wildcards and its escape character.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

func escapeLike(s string) string { return likeEscaper.Replace(s) }

func listCursor(createdAt time.Time, keyID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(createdAt.UnixMicro(), 10) + "." + keyID))
}

func parseListCursor(s string) (time.Time, string, error) {
	bad := domain.Errorf(domain.EInvalid, "the cursor is not one this service returned")
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return time.Time{}, "", bad
	}
	micros, id, ok := strings.Cut(string(b), ".")
	if !ok || !domain.ValidKeyID(id) {
		return time.Time{}, "", bad
	}
	n, err := strconv.ParseInt(micros, 10, 64)
	if err != nil {
		return time.Time{}, "", bad
	}
	return time.UnixMicro(n).UTC(), id, nil
}
