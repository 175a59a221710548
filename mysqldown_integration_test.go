package cache

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/faultproxy"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// DESIGN §5 "MySQL down" on the real MariaDB and Redis: the Loaders reach
// the database through a TCP proxy that refuses or swallows connections,
// and Redis directly. A Get of a cached key still hits; a Get of an
// uncached key returns the load error within LoadTimeout (and a margin);
// a failed load is never cached, so once the database is back the key
// loads the row. Where StaleIfError is on, an expired or invalidated value
// at most MaxStale old answers instead of the error; elsewhere it never
// does.

const (
	mdLoadTimeout = 300 * time.Millisecond
	mdTTL         = 300 * time.Millisecond
	// mdMargin absorbs Redis round trips and scheduling on 2 cores under
	// -race; without LoadTimeout a blackholed database would hold a Get for
	// the driver's whole read (forever: the DSN sets no readTimeout).
	mdMargin = 300 * time.Millisecond
)

// mdRow is one row of the table the LoadFunc reads.
type mdRow struct {
	ID  string `json:"id"`
	Val string `json:"val"`
	Ver int64  `json:"ver"`
}

func (r mdRow) CacheVersion() int64 { return r.Ver }

// mdEnv is a table on the real database, reached by the Loaders through a
// proxy (the test itself writes around it), and a Redis prefix.
type mdEnv struct {
	t      *testing.T
	direct *sql.DB // not through the proxy: the test's own writes
	viaPx  *sql.DB // through the proxy: the LoadFunc's
	proxy  *faultproxy.Proxy
	table  string
	rdb    *redis.Client
	prefix string
}

func newMDEnv(t *testing.T) *mdEnv {
	t.Helper()
	direct := testenv.MySQL(t)
	rdb := testenv.Redis(t, "")
	e := &mdEnv{t: t, direct: direct, rdb: rdb, prefix: testenv.Prefix(t, rdb, "cachetest:")}
	e.table = testenv.Table(t, direct, "mysqldown")
	ctx := context.Background()
	_, err := direct.ExecContext(ctx, "CREATE TABLE "+e.table+
		" (id VARCHAR(32) PRIMARY KEY, val VARCHAR(64) NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB")
	require.NoError(t, err)
	for _, id := range []string{"a", "b", "c"} {
		_, err := direct.ExecContext(ctx, "INSERT INTO "+e.table+" (id, val, version) VALUES (?, ?, 1)", id, "val-"+id)
		require.NoError(t, err)
	}

	cfg, err := mysql.ParseDSN(testenv.MySQLDSN())
	require.NoError(t, err)
	if cfg.Net != "tcp" {
		t.Skipf("the database is reached over %q; the proxy needs tcp", cfg.Net)
	}
	e.proxy, err = faultproxy.Start(cfg.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { e.proxy.Close() })
	cfg.Addr = e.proxy.Addr()
	cfg.Timeout = time.Second
	e.viaPx, err = sql.Open("mysql", cfg.FormatDSN())
	require.NoError(t, err)
	t.Cleanup(func() { e.viaPx.Close() }) // before the proxy closes
	return e
}

// load is the LoadFunc: one SELECT through the proxy.
func (e *mdEnv) load(ctx context.Context, key string) (mdRow, error) {
	r := mdRow{ID: key}
	err := e.viaPx.QueryRowContext(ctx, "SELECT val, version FROM "+e.table+" WHERE id=?", key).Scan(&r.Val, &r.Ver)
	return r, err
}

// loader returns a Loader of the table. Every Loader of e shares its
// prefix and name: they read and write the same entries.
func (e *mdEnv) loader(opts Options) *Loader[mdRow] {
	e.t.Helper()
	opts.Prefix = e.prefix
	if opts.LoadTimeout == 0 {
		opts.LoadTimeout = mdLoadTimeout
	}
	l, err := New(e.rdb, "md", e.load, &opts)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { l.Close() })
	return l
}

// update commits a new value of id, around the proxy.
func (e *mdEnv) update(id, val string) mdRow {
	e.t.Helper()
	_, err := e.direct.Exec("UPDATE "+e.table+" SET val=?, version=version+1 WHERE id=?", val, id)
	require.NoError(e.t, err)
	r := mdRow{ID: id}
	require.NoError(e.t, e.direct.QueryRow("SELECT val, version FROM "+e.table+" WHERE id=?", id).Scan(&r.Val, &r.Ver))
	return r
}

func (e *mdEnv) down(mode faultproxy.Mode) { require.NoError(e.t, e.proxy.Set(mode, 0)) }
func (e *mdEnv) up()                       { require.NoError(e.t, e.proxy.Set(faultproxy.Pass, 0)) }

// hash returns key's raw entry.
func (e *mdEnv) hash(l *Loader[mdRow], key string) map[string]string {
	e.t.Helper()
	return fields(e.t, e.rdb, l.Key(key))
}

// requireNothingCached requires key's entry, if any, to hold no payload and
// no negative flag: the failed load left nothing to answer from. (Its lease
// may still be there for a moment: a release that did not fit in the Get's
// Redis budget is sent after the Get returns.)
func (e *mdEnv) requireNothingCached(l *Loader[mdRow], key string) {
	e.t.Helper()
	h := e.hash(l, key)
	require.NotContains(e.t, h, entry.Payload, "a failed load stored a payload: %v", h)
	if f, ok := h["f"]; ok {
		n, err := strconv.Atoi(f)
		require.NoError(e.t, err)
		require.Zero(e.t, n&entry.FlagNegative, "a failed load was cached as not found: %v", h)
	}
}

// mdGet is Get, timed.
func mdGet(l *Loader[mdRow], key string) (mdRow, time.Duration, error) {
	start := time.Now()
	v, err := l.Get(context.Background(), key)
	return v, time.Since(start), err
}

// requireLoadError requires Get of key to fail with the load error (not
// ErrNotFound) within LoadTimeout and the margin.
func requireLoadError(t *testing.T, l *Loader[mdRow], key string) {
	t.Helper()
	v, d, err := mdGet(l, key)
	require.Error(t, err, "Get(%s) = %+v with the database down", key, v)
	require.ErrorContains(t, err, "cache: load")
	require.NotErrorIs(t, err, ErrNotFound)
	require.Less(t, d, mdLoadTimeout+mdMargin, "Get(%s) took %v: %v", key, d, err)
	t.Logf("Get(%s) failed after %v: %v", key, d.Round(time.Millisecond), err)
}

// requireStale requires Get of key to answer want, counted as stale, within
// LoadTimeout and the margin (the load is tried first).
func requireStale(t *testing.T, l *Loader[mdRow], key string, want mdRow) {
	t.Helper()
	before := l.Stats()
	v, d, err := mdGet(l, key)
	require.NoError(t, err, "StaleIfError: Get(%s) must answer the stale value", key)
	require.Equal(t, want, v)
	require.Less(t, d, mdLoadTimeout+mdMargin, "Get(%s) took %v", key, d)
	after := l.Stats()
	require.Equal(t, before.Stale+1, after.Stale, "counted as stale")
	require.Equal(t, before.LoadErrors+1, after.LoadErrors, "the load was tried and failed")
}

// sleepUntil waits for the wall clock: entries expire on Redis's.
func sleepUntil(at time.Time) {
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	<-timer.C
}

var mdModes = []struct {
	name string
	mode faultproxy.Mode
}{
	{"refusing", faultproxy.Refuse},
	{"blackholed", faultproxy.Blackhole},
}

func TestMySQLDown(t *testing.T) {
	ctx := context.Background()
	want := func(id string) mdRow { return mdRow{ID: id, Val: "val-" + id, Ver: 1} }

	for _, m := range mdModes {
		t.Run(m.name, func(t *testing.T) {
			e := newMDEnv(t)
			l := e.loader(Options{})
			v, err := l.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, want("a"), v)

			e.down(m.mode)
			// A cached key is answered from Redis: the database is not asked.
			for range 3 {
				v, d, err := mdGet(l, "a")
				require.NoError(t, err, "a cached key must hit with the database down")
				require.Equal(t, want("a"), v)
				require.Less(t, d, mdMargin)
			}
			require.EqualValues(t, 1, l.Stats().Loads, "hits must not load")

			// An uncached key fails, every time (nothing was cached by the
			// failure, not even "not found").
			for range 3 {
				loads := l.Stats().Loads
				requireLoadError(t, l, "b")
				require.Equal(t, loads+1, l.Stats().Loads,
					"this Get did not load: it was answered with the failure of an earlier Get's load")
				e.requireNothingCached(l, "b")
			}
			st := l.Stats()
			require.EqualValues(t, 3, st.LoadErrors)
			require.EqualValues(t, 4, st.Loads)
			require.Zero(t, st.NegativeHits)
			require.Zero(t, st.Stale, "stale serving is off")

			// The database is back: the key loads its row.
			e.up()
			v, err = l.Get(ctx, "b")
			require.NoError(t, err, "the failed loads left something behind")
			require.Equal(t, want("b"), v)
			require.EqualValues(t, 5, l.Stats().Loads)
			h := e.hash(l, "b")
			require.JSONEq(t, mustJSON(t, want("b")), h["p"], "entry %v", h)
			require.NotContains(t, h, "f")
			v, err = l.Get(ctx, "b")
			require.NoError(t, err)
			require.Equal(t, want("b"), v)
			require.EqualValues(t, 5, l.Stats().Loads, "the loaded row is cached")
			require.EqualValues(t, 3, l.Stats().LoadErrors)
		})
	}

	for _, m := range mdModes {
		t.Run("stale_if_error/"+m.name, func(t *testing.T) {
			e := newMDEnv(t)
			// Same prefix and name: plain reads the entries stale fills.
			stale := e.loader(Options{TTL: mdTTL, DisableJitter: true, StaleIfError: true, MaxStale: 10 * time.Second})
			plain := e.loader(Options{TTL: mdTTL, DisableJitter: true})

			filled := time.Now()
			v, err := stale.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, want("a"), v)
			v, err = plain.Get(ctx, "b")
			require.NoError(t, err)
			require.Equal(t, want("b"), v)
			// The rows change while the database is unreachable to the
			// Loaders: a stale answer is then told apart from a load.
			newA, newB := e.update("a", "new-a"), e.update("b", "new-b")
			e.down(m.mode)

			sleepUntil(filled.Add(mdTTL + 100*time.Millisecond))
			// Expired, kept MaxStale for stale serving: the load fails,
			// the stale value answers.
			requireStale(t, stale, "a", want("a"))
			require.JSONEq(t, mustJSON(t, want("a")), e.hash(stale, "a")["p"],
				"the failed load changed the kept value")
			// A Loader without stale serving returns the error, on the
			// same entry (its stale payload is there) and on its own.
			requireLoadError(t, plain, "a")
			requireLoadError(t, plain, "b")
			require.Zero(t, plain.Stats().Stale)

			// Invalidated values are kept for stale serving too.
			require.NoError(t, stale.Invalidate(ctx, "a"))
			h := e.hash(stale, "a")
			require.Equal(t, strconv.Itoa(entry.FlagInvalidated), h["f"], "entry %v", h)
			require.Contains(t, h, entry.Payload, "MaxStale > 0: the invalidated value is kept")
			requireStale(t, stale, "a", want("a"))
			requireLoadError(t, plain, "a")
			require.EqualValues(t, 2, stale.Stats().Stale)

			// The database is back: the rows load, nothing stale remains.
			e.up()
			v, err = stale.Get(ctx, "a")
			require.NoError(t, err)
			require.Equal(t, newA, v)
			v, err = plain.Get(ctx, "b")
			require.NoError(t, err)
			require.Equal(t, newB, v)
			require.EqualValues(t, 2, stale.Stats().Stale)
			require.EqualValues(t, 2, stale.Stats().LoadErrors)
			require.EqualValues(t, 3, plain.Stats().LoadErrors)
		})
	}

	for _, m := range mdModes {
		t.Run("max_stale/"+m.name, func(t *testing.T) {
			// 2s: b's staleness, counted from its invalidation, must stay
			// under it until its Get has tried the load; at 1s a loaded
			// machine's scheduling ran past it (3 of 20 runs).
			const maxStale = 2 * time.Second
			e := newMDEnv(t)
			l := e.loader(Options{TTL: mdTTL, DisableJitter: true, StaleIfError: true, MaxStale: maxStale})

			start := time.Now()
			for _, k := range []string{"a", "b"} {
				v, err := l.Get(ctx, k)
				require.NoError(t, err)
				require.Equal(t, want(k), v)
			}
			// b is invalidated at once: its staleness counts from now, a's
			// from its expiry, TTL later.
			require.NoError(t, l.Invalidate(ctx, "b"))
			e.down(m.mode)

			sleepUntil(start.Add(mdTTL + 100*time.Millisecond))
			// b first: a blackholed load takes LoadTimeout, and b has the
			// least stale time left.
			requireStale(t, l, "b", want("b"))
			requireStale(t, l, "a", want("a"))

			sleepUntil(start.Add(mdTTL + maxStale + 200*time.Millisecond))
			// Past MaxStale: no stale value answers any more.
			requireLoadError(t, l, "b")
			requireLoadError(t, l, "a")
			st := l.Stats()
			require.EqualValues(t, 2, st.Stale)
			require.EqualValues(t, 4, st.LoadErrors)

			e.up()
			for _, k := range []string{"a", "b"} {
				v, err := l.Get(ctx, k)
				require.NoError(t, err)
				require.Equal(t, want(k), v)
			}
		})
	}
}
