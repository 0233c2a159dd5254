package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/keyledger/keyledger/domain"
	"github.com/keyledger/keyledger/projections"
)

const (
	listTargetP99ms = 20.0
	listDatasetName = "list"
	// listOrg is the organization that is listed; the other keys belong to
	// listOtherOrgs organizations.
	listOrg       = "bench-list"
	listOtherOrgs = 1000
	listSeed      = 20240601
)

// listSearchTerms are what portal users type into the search box: common
// words that match a large share of an organization's keys, rarer ones, a
// two-letter one (below pg_trgm's trigram length) and one that matches
// nothing. The fractions in comments are of the data set's names.
var listSearchTerms = []string{
	"production",       // ~26%
	"prod",             // ~26%
	"staging",          // ~19%
	"key",              // ~19%
	"payments",         // ~2%
	"backend",          // ~3%
	"webhooks",         // ~2%
	"deploy",           // ~2%
	"ci",               // ~2%, two letters
	"-42",              // ~1%
	"laptop",           // ~1%
	"terraform",        // ~0.7%
	"ml-scoring",       // ~2%
	"no-such-key-name", // none
}

// listDataset is the loaded data of the list scenario.
type listDataset struct {
	org       string
	orgKeys   int
	totalKeys int
}

// ensureListDataset makes sure the bench database holds the list data set
// of the configured sizes, loading it unless a previous run did (and
// --reload is not given).
func (b *bench) ensureListDataset(ctx context.Context) (*listDataset, error) {
	want := &listDataset{org: listOrg, orgKeys: b.cfg.listOrgKeys, totalKeys: b.cfg.listTotalKeys}
	if !b.cfg.reload {
		ok, why, err := b.listDatasetPresent(ctx, want)
		if err != nil {
			return nil, err
		}
		if ok {
			fmt.Fprintf(b.progress, "list: %s; skipping the load (--reload forces it)\n", why)
			return want, nil
		}
		fmt.Fprintf(b.progress, "list: %s\n", why)
	}
	var used bool
	if err := b.data.loader.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events)`).Scan(&used); err != nil {
		return nil, err
	}
	if used {
		// Events cannot be deleted (the table refuses it), so a clean data set
		// needs a clean database.
		fmt.Fprintf(b.progress, "list: dropping and recreating database %q for a clean load\n", b.cfg.benchDB)
		if err := b.data.recreate(ctx); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	fmt.Fprintf(b.progress, "list: loading %s keys (%s in %q) through Store.Import, %d events per transaction, %d at a time\n",
		thousands(int64(want.totalKeys)), thousands(int64(want.orgKeys)), want.org, b.cfg.batch, b.cfg.loadWorkers)
	now := time.Now()
	if err := b.importKeys(ctx, b.data, "list", want.totalKeys, listKeySpec(want, now), nil); err != nil {
		return nil, err
	}
	if err := b.analyze(ctx, b.data, "list"); err != nil {
		return nil, err
	}
	if _, err := b.data.loader.Exec(ctx, `INSERT INTO bench_dataset (name, org_id, org_keys, total_keys) VALUES ($1, $2, $3, $4)`,
		listDatasetName, want.org, want.orgKeys, want.totalKeys); err != nil {
		return nil, err
	}
	fmt.Fprintf(b.progress, "list: data set loaded in %s\n", time.Since(start).Round(time.Second))
	return want, nil
}

// listDatasetPresent reports whether a previous run loaded the data set with
// the same sizes, and says why or why not.
func (b *bench) listDatasetPresent(ctx context.Context, want *listDataset) (bool, string, error) {
	var org string
	var orgKeys, totalKeys int
	var loadedAt time.Time
	err := b.data.loader.QueryRow(ctx, `SELECT org_id, org_keys, total_keys, loaded_at FROM bench_dataset WHERE name = $1`, listDatasetName).
		Scan(&org, &orgKeys, &totalKeys, &loadedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, "no list data set in the bench database yet", nil
	}
	if err != nil {
		return false, "", err
	}
	if org != want.org || orgKeys != want.orgKeys || totalKeys != want.totalKeys {
		return false, fmt.Sprintf("the bench database holds a list data set of other sizes (%s keys, %s in %q)",
			thousands(int64(totalKeys)), thousands(int64(orgKeys)), org), nil
	}
	var inOrg, all int
	if err := b.data.loader.QueryRow(ctx, `SELECT (SELECT count(*) FROM key_list WHERE org_id = $1), (SELECT count(*) FROM key_list)`, org).
		Scan(&inOrg, &all); err != nil {
		return false, "", err
	}
	if inOrg != want.orgKeys || all != want.totalKeys {
		return false, fmt.Sprintf("the bench database holds %s keys, %s in %q, not the list data set alone", thousands(int64(all)), thousands(int64(inOrg)), org), nil
	}
	return true, fmt.Sprintf("the bench database already holds the list data set: %s keys overall, %s in %q, loaded %s",
		thousands(int64(all)), thousands(int64(inOrg)), org, loadedAt.Local().Format(time.DateTime)), nil
}

// listKeySpec spreads the listed organization's keys evenly through the
// load (so that they are spread through the table, as a real history
// leaves them), gives the others to listOtherOrgs organizations, creates
// keys over the two years before now, in load order, and draws names,
// expiries (half never, 10% past, 5% within 7 days, the rest later) and
// revocations (15%) from a seeded generator.
func listKeySpec(ds *listDataset, now time.Time) func(i int) keySpec {
	span := 2 * 365 * 24 * time.Hour
	begin := now.Add(-span)
	return func(i int) keySpec {
		r := rand.New(rand.NewPCG(listSeed, uint64(i)))
		s := keySpec{
			name:    keyName(r),
			created: begin.Add(time.Duration(float64(span-time.Hour) * float64(i) / float64(ds.totalKeys))),
		}
		if inListedOrg(i, ds) {
			s.org = ds.org
		} else {
			s.org = fmt.Sprintf("bench-org-%04d", r.IntN(listOtherOrgs))
		}
		age := now.Sub(s.created)
		switch p := r.IntN(100); {
		case p < 50:
		case p < 60:
			t := s.created.Add(time.Second + time.Duration(r.Float64()*float64(age-time.Second)))
			s.expires = &t
		case p < 65:
			t := now.Add(time.Hour + time.Duration(r.Float64()*float64(6*24*time.Hour)))
			s.expires = &t
		default:
			t := now.Add(8*24*time.Hour + time.Duration(r.Float64()*float64(span)))
			s.expires = &t
		}
		if r.IntN(100) < 15 {
			t := s.created.Add(time.Duration(r.Float64() * float64(age)))
			s.revoked = &t
		}
		return s
	}
}

// inListedOrg spreads exactly ds.orgKeys of ds.totalKeys keys evenly.
func inListedOrg(i int, ds *listDataset) bool {
	return (i+1)*ds.orgKeys/ds.totalKeys != i*ds.orgKeys/ds.totalKeys
}

// list measures the search latency of the key list against the latency of
// the unfiltered list on the same data.
func (b *bench) list(ctx context.Context, ds *listDataset, w io.Writer) (result, error) {
	cfg := b.cfg
	fmt.Fprintf(w, "\n== list: GET /v1/orgs/%s/keys?q=<term>&status=active, %d clients, %s keys in the org, %s overall; baseline: the unfiltered list\n",
		ds.org, cfg.listClients, thousands(int64(ds.orgKeys)), thousands(int64(ds.totalKeys)))
	load := loadAvg()
	fmt.Fprintf(w, "  (load average %.2f at start)\n", load)
	b.data.checkpoint(ctx, b.progress)
	svc, err := b.startService(ctx, b.data, serviceOptions{})
	if err != nil {
		return result{}, err
	}
	defer svc.close()

	search, base := b.compare(ctx, "list", b.data, httpSide(httpLoad{
		label:   "keyledger ?q=<term>&status=active",
		clients: cfg.listClients,
		targets: listTargeter(svc, ds.org, true),
		success: http.StatusOK,
		tag: func(res *vegeta.Result) string {
			u, err := url.Parse(res.URL)
			if err != nil {
				return "?"
			}
			return u.Query().Get("q")
		},
	}), httpSide(httpLoad{
		label:   "keyledger unfiltered list",
		clients: cfg.listClients,
		targets: listTargeter(svc, ds.org, false),
		success: http.StatusOK,
	}))
	if err := ctx.Err(); err != nil {
		return result{}, err
	}

	printRun(w, search, "req/s")
	printRun(w, base, "req/s")
	printTerms(w, search)
	value, baseline := ms(search.pct(0.99)), ms(base.pct(0.99))
	r := measured("list", "ms (p99)", "p99 < 20 ms", search, base, cfg.listClients, cfg.duration, load)
	r.Value, r.Baseline, r.Ratio, r.Target = value, baseline, ratio(value, baseline), listTargetP99ms
	r.OK = value < listTargetP99ms && search.ok > 0
	fmt.Fprintf(w, "  search p99 %.3f ms vs unfiltered p99 %.3f ms: ratio %.3f; target p99 < %.0f ms: %s\n",
		value, baseline, r.Ratio, listTargetP99ms, verdict(r.OK))
	if cfg.explain {
		if err := b.explainList(ctx, ds, w); err != nil {
			return r, err
		}
	}
	return r, nil
}

// listTargeter lists the organization's first page, searching a random
// term with status=active, or with no filter at all.
func listTargeter(svc *instance, org string, search bool) vegeta.Targeter {
	base := svc.URL + "/v1/orgs/" + org + "/keys"
	header := http.Header{"Authorization": {"Bearer " + svc.Token}}
	urls := []string{base}
	if search {
		urls = urls[:0]
		for _, t := range listSearchTerms {
			urls = append(urls, base+"?q="+url.QueryEscape(t)+"&status=active")
		}
	}
	return func(t *vegeta.Target) error {
		t.Method = http.MethodGet
		t.URL = urls[rand.IntN(len(urls))]
		t.Header = header
		return nil
	}
}

// printTerms shows the latency of each search term, slowest first.
func printTerms(w io.Writer, r *loadRun) {
	type term struct {
		q        string
		n        int
		p50, p99 time.Duration
	}
	var terms []term
	for q, lats := range r.tagged {
		terms = append(terms, term{q, len(lats), percentile(lats, 0.5), percentile(lats, 0.99)})
	}
	sort.Slice(terms, func(i, j int) bool { return terms[i].p99 > terms[j].p99 })
	fmt.Fprintf(w, "    by search term (slowest p99 first):\n")
	for _, t := range terms {
		fmt.Fprintf(w, "      q=%-18s %6d req  p50 %8.3f ms  p99 %8.3f ms\n", strconv.Quote(t.q), t.n, ms(t.p50), ms(t.p99))
	}
}

// explainList prints the plan and timing of each statement that
// projections.Views.ListKeys sends for the first page of each search term
// with status=active, as Postgres' auto_explain reports them to the session
// (a superuser's: LOAD needs one), so that what is explained is what the
// service runs.
func (b *bench) explainList(ctx context.Context, ds *listDataset, w io.Writer) error {
	pcfg, err := pgxpool.ParseConfig(b.data.url)
	if err != nil {
		return err
	}
	pcfg.MaxConns = 1
	pcfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, `LOAD 'auto_explain';
			SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on;
			SET auto_explain.log_buffers = on; SET auto_explain.log_level = notice;
			SET client_min_messages = notice`)
		if err != nil {
			return fmt.Errorf("explain: load auto_explain (the bench database's user must be a superuser): %w", err)
		}
		return nil
	}
	var term string
	pcfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if strings.Contains(n.Message, "set_config(") {
			return // QueryGeneric's setting of plan_cache_mode
		}
		fmt.Fprintf(w, "\n  q=%q: %s\n", term, strings.ReplaceAll(n.Message, "\n", "\n    "))
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil { // connects, loading auto_explain
		return err
	}
	views := projections.NewViews(pool)
	for _, term = range listSearchTerms {
		_, err := views.ListKeys(ctx, domain.KeyQuery{OrgID: ds.org, Search: term, Status: domain.StatusActive,
			Limit: domain.DefaultPageSize, Now: time.Now()})
		if err != nil {
			return fmt.Errorf("explain q=%q: %w", term, err)
		}
	}
	return nil
}
