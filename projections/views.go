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
	search  searchPlan
}

// NewViews returns a reader of the views in pool's database.
func NewViews(pool *pgxpool.Pool) *Views {
	return &Views{pool: pool, lookups: newLookupBatcher(pool), search: defaultSearchPlan}
}

var (
	_ domain.KeyLookup = (*Views)(nil)
	_ domain.KeyReader = (*Views)(nil)
)

const keyColumns = `org_id, key_id, name, masked, key_hash, created_at, expires_at, revoked_at, revoke_reason, version`

// searchPlan sets how a search chooses between walking and looking up (see
// ListKeys).
type searchPlan struct {
	sample int // how many keys the first walk tests
	dense  int // how many matches among them make walking on the cheaper way
	most   int // how many keys a second walk tests at most
}

// defaultSearchPlan is the searchPlan measured in an organization of
// 100,000 keys (of a million) on a 2-core machine, where a key walked cost
// about 0.45 µs and a lookup about 5 ms for the index and 4.5 µs a match.
// The rest of a page of a term that one key in 200 matches (10 in 2,000)
// then takes some 8,000 keys walked (3.6 ms) against a lookup of 8 ms; at one
// in 400 both take about 7 ms. The first walk's 10 in 2,000 tells the two
// apart with room for its own error, and the second walk's bound (some 4.5
// ms) caps what a wrong guess costs.
var defaultSearchPlan = searchPlan{sample: 2000, dense: 10, most: 10000}

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
// "-42", which 13,000 of a million hold), and walks for a term that its cost
// model takes for common enough: 16 ms for "terraform", which a lookup
// serves in 7. So a search measures its term instead, on the newest keys:
//
//  1. It walks the sample newest keys after the cursor in key_list_newest,
//     which holds the lowered name (lname) and the status columns, so that
//     each key is tested in the index alone (an index-only scan on pages
//     that vacuum has marked all-visible), and only the page's keys are read
//     from the table. A common term fills its page here. The statement's
//     plan is the same for any values, so it runs with its generic plan
//     (eventstore.QueryGeneric), not planned again at each call: a common
//     term's page took 0.4 to 0.5 ms so, against 0.65 to 0.85 ms planned.
//  2. If the walk found dense matches or more, the term is common enough
//     that walking on is the cheaper way: a second walk, from the last
//     match, tests as many keys as the rate found predicts for twice the
//     matches the page still needs and ten more (at most most). It stops
//     when the page is full; the bound only stops it where the term grows
//     rare.
//  3. Whatever the walks have not found, a lookup finds among the keys
//     older than the last match (or the cursor): every match of the
//     organization, by key_list_org_lname, whose trigram entries carry the
//     organization, sorted. Its matches are gathered apart from their order
//     (a MATERIALIZED CTE), so that Postgres does not walk for them, unless
//     it takes the term for a common one over the whole organization. The
//     price: a term that the newest keys hardly hold but older ones often
//     do (names whose convention changed) gathers all of its older matches
//     for its first page (some 4.5 µs a match).
//
// The page is the one a single query would return, but for keys written
// between the steps: each step returns, in list order, every match among
// the keys it tests, or the first ones if they fill the page, and the next
// step starts strictly after the last key returned (testing again the keys
// past it that did not match). The next cursor is the page's last key, as
// always. In an organization of fewer keys than the sample, a search that
// does not fill its page still takes the later steps, on what is left: no
// key at all for the walk, none older for the lookup. A list without a
// search takes one query: a status filter alone has no such choice to get
// wrong.
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
		keys, err = v.listSearch(ctx, q, after, want)
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

// listSearch returns up to n of the organization's keys that match q's
// search and status, after p if set, newest first, in the steps that
// ListKeys describes.
func (v *Views) listSearch(ctx context.Context, q domain.KeyQuery, p *listPos, n int) ([]*domain.Key, error) {
	s := v.search
	keys, err := v.listWalk(ctx, q, p, s.sample, n)
	if err != nil || len(keys) == n {
		return keys, err
	}
	if len(keys) >= s.dense { // dense is at least 1
		need := n - len(keys)
		// Room for twice the matches the page needs, and ten more: with
		// few needed, the gap to the next one varies most (171 keys, where
		// the rate predicted 40, for "backend").
		walk := min((2*need+10)*s.sample/len(keys), s.most)
		more, err := v.listWalk(ctx, q, lastPos(keys), walk, need)
		if err != nil {
			return nil, err
		}
		keys = append(keys, more...)
		if len(keys) == n {
			return keys, nil
		}
	}
	if len(keys) > 0 {
		p = lastPos(keys)
	}
	more, err := v.listLookup(ctx, q, p, n-len(keys))
	return append(keys, more...), err
}

// lastPos is the place of the last of keys, which must not be empty.
func lastPos(keys []*domain.Key) *listPos {
	k := keys[len(keys)-1]
	return &listPos{k.CreatedAt, k.ID}
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
// is lname LIKE lower(pattern): lname is lower(name), stored when the key
// was written (migration 00008), which is what ILIKE tests in a multibyte
// encoding (Postgres lowers both sides, then matches). key_list_newest
// serves it for each key walked, in the index alone, and key_list_org_lname
// (trigrams) serves a lookup. It relies on name having the database's
// default collation (lower($n) lowers with it), as the migrations leave it.
func listConditions(q domain.KeyQuery, a *sqlArgs) ([]string, error) {
	return conditions(q, a, func(pattern string) string { return "lname LIKE lower(" + pattern + ")" })
}

// walkConditions are listConditions for a walk, which runs with its generic
// plan, where lower($n) would be computed again for every key walked: the
// pattern is lowered once, by a subquery (an InitPlan). The trigram index
// cannot serve it; a walk does not need it.
func walkConditions(q domain.KeyQuery, a *sqlArgs) ([]string, error) {
	return conditions(q, a, func(pattern string) string { return "lname LIKE (SELECT lower(" + pattern + "))" })
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

// queryKeys runs a statement of the list that reads keyColumns, planned for
// its call's values, in one round trip (an unnamed statement with a cached
// description). A cached prepared statement may switch to a generic plan
// after five executions, and a search's lookup must be planned for its
// term: only the term tells whether key_list_org_lname can serve it (not
// below three characters, a trigram's length) or the organization's keys
// must be tested one by one (in key_list_newest).
func (v *Views) queryKeys(ctx context.Context, sql string, a sqlArgs) ([]*domain.Key, error) {
	rows, err := v.pool.Query(ctx, sql, append([]any{pgx.QueryExecModeCacheDescribe}, a...)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanKey)
}

// pageOf is the statement that reads, in list order, the organization's ($1)
// keys that chosen, a statement of key_id and created_at, returns.
func pageOf(chosen string) string {
	return `SELECT ` + joinedKeyColumns + ` FROM (` + chosen + `) p
	JOIN key_list k ON k.org_id = $1 AND k.key_id = p.key_id
	ORDER BY p.created_at DESC, p.key_id DESC`
}

// listAfter returns up to n of the organization's keys that match q, after
// p if set, newest first, by the one query, planned for this call's values.
// With a filter, the keys are chosen from key_list_newest (an index-only
// scan, when Postgres walks it) and only theirs are read from the table.
func (v *Views) listAfter(ctx context.Context, q domain.KeyQuery, p *listPos, n int) ([]*domain.Key, error) {
	a := sqlArgs{q.OrgID}
	conds, err := listConditions(q, &a)
	if err != nil {
		return nil, err
	}
	where := listRange(&a, p)
	if len(conds) == 0 {
		return v.queryKeys(ctx, `SELECT `+keyColumns+` FROM key_list WHERE `+where+`
			ORDER BY created_at DESC, key_id DESC LIMIT `+a.add(n), a)
	}
	return v.queryKeys(ctx, pageOf(`SELECT key_id, created_at FROM key_list
		WHERE `+where+` AND `+strings.Join(conds, " AND ")+`
		ORDER BY created_at DESC, key_id DESC LIMIT `+a.add(n)), a)
}

// listWalk returns up to n of the organization's keys that match q, newest
// first, among the walk keys after p (or the newest ones if p is nil).
func (v *Views) listWalk(ctx context.Context, q domain.KeyQuery, p *listPos, walk, n int) ([]*domain.Key, error) {
	a := sqlArgs{q.OrgID}
	conds, err := walkConditions(q, &a)
	if err != nil {
		return nil, err
	}
	sql := pageOf(`SELECT key_id, created_at FROM (
			SELECT key_id, created_at, lname, revoked_at, expires_at FROM key_list WHERE ` + listRange(&a, p) + `
			ORDER BY created_at DESC, key_id DESC LIMIT ` + a.add(walk) + `) walked
		WHERE ` + strings.Join(conds, " AND ") + `
		ORDER BY created_at DESC, key_id DESC LIMIT ` + a.add(n))
	var keys []*domain.Key
	err = eventstore.QueryGeneric(ctx, v.pool, sql, a, func(rows pgx.Rows) error {
		var err error
		keys, err = pgx.CollectRows(rows, scanKey)
		return err
	})
	return keys, err
}

// listLookup returns up to n of the organization's keys that match q, after
// p if set, newest first, from all of their matches: Postgres gathers them
// (by key_list_org_lname, unless the term is too short for a trigram or it
// takes the term for a common one over the whole organization) before it
// orders them, and reads the table only for the page's keys.
func (v *Views) listLookup(ctx context.Context, q domain.KeyQuery, p *listPos, n int) ([]*domain.Key, error) {
	a := sqlArgs{q.OrgID}
	conds, err := listConditions(q, &a)
	if err != nil {
		return nil, err
	}
	return v.queryKeys(ctx, `WITH matches AS MATERIALIZED (
		SELECT key_id, created_at FROM key_list WHERE `+listRange(&a, p)+` AND `+strings.Join(conds, " AND ")+`)
	`+pageOf(`SELECT key_id, created_at FROM matches ORDER BY created_at DESC, key_id DESC LIMIT `+a.add(n)), a)
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

func scanKey(row pgx.CollectableRow) (*domain.Key, error) {
	k := &domain.Key{}
	var h []byte
	err := row.Scan(&k.OrgID, &k.ID, &k.Name, &k.Masked, &h, &k.CreatedAt, &k.ExpiresAt, &k.RevokedAt, &k.RevokeReason, &k.Version)
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
