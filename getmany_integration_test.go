package cache

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// GetMany with a batch load on the real servers: a MariaDB table read with
// one SELECT … WHERE id IN (…) per batch, on a single Redis and on a Redis
// Cluster (keys spread over every master).

// manyRow is a row of the GetMany test table.
type manyRow struct {
	ID  int64  `json:"id"`
	Val string `json:"val"`
	Ver int64  `json:"ver"`
}

func (r manyRow) CacheVersion() int64 { return r.Ver }

// manyDB is the GetMany test table and its batch load.
type manyDB struct {
	db    *sql.DB
	table string
	calls atomic.Int64 // batch load calls
	keys  atomic.Int64 // keys asked for, over all calls
	delay time.Duration
}

// newManyDB creates a table with rows 1..n (val "v<id>", version 1).
func newManyDB(t testing.TB, n int) *manyDB {
	t.Helper()
	db := testenv.MySQL(t)
	m := &manyDB{db: db, table: testenv.Table(t, db, "getmany")}
	ctx := context.Background()
	_, err := db.ExecContext(ctx, "CREATE TABLE "+m.table+
		" (id BIGINT PRIMARY KEY, val VARCHAR(64) NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB")
	require.NoError(t, err)
	var sb strings.Builder
	var args []any
	sb.WriteString("INSERT INTO " + m.table + " (id, val, version) VALUES ")
	for i := 1; i <= n; i++ {
		if i > 1 {
			sb.WriteByte(',')
		}
		sb.WriteString("(?, ?, 1)")
		args = append(args, i, "v"+strconv.Itoa(i))
	}
	_, err = db.ExecContext(ctx, sb.String(), args...)
	require.NoError(t, err)
	return m
}

// load is the BatchLoadFunc: one SELECT … WHERE id IN (…).
func (m *manyDB) load(ctx context.Context, keys []string) (map[string]manyRow, error) {
	m.calls.Add(1)
	m.keys.Add(int64(len(keys)))
	args := make([]any, len(keys))
	for i, k := range keys {
		args[i] = k
	}
	q := "SELECT id, val, version FROM " + m.table + " WHERE id IN (?" + strings.Repeat(",?", len(keys)-1) + ")"
	rows, err := m.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]manyRow, len(keys))
	for rows.Next() {
		var r manyRow
		if err := rows.Scan(&r.ID, &r.Val, &r.Ver); err != nil {
			return nil, err
		}
		out[strconv.FormatInt(r.ID, 10)] = r
	}
	if m.delay > 0 {
		time.Sleep(m.delay) // a slow reader, after the rows were read
	}
	return out, rows.Err()
}

// loadOne is a LoadFunc: one SELECT … WHERE id = ?.
func (m *manyDB) loadOne(ctx context.Context, key string) (manyRow, error) {
	m.calls.Add(1)
	m.keys.Add(1)
	var r manyRow
	err := m.db.QueryRowContext(ctx, "SELECT id, val, version FROM "+m.table+" WHERE id = ?", key).Scan(&r.ID, &r.Val, &r.Ver)
	return r, err
}

// update commits a new val for id and returns the new version.
func (m *manyDB) update(ctx context.Context, id string) (int64, error) {
	res, err := m.db.ExecContext(ctx, "UPDATE "+m.table+
		" SET val = CONCAT('w', version + 1), version = LAST_INSERT_ID(version + 1) WHERE id = ?", id)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// versions returns every row's version.
func (m *manyDB) versions(ctx context.Context) (map[string]int64, error) {
	rows, err := m.db.QueryContext(ctx, "SELECT id, version FROM "+m.table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id, v int64
		if err := rows.Scan(&id, &v); err != nil {
			return nil, err
		}
		out[strconv.FormatInt(id, 10)] = v
	}
	return out, rows.Err()
}

func newManyLoader(t testing.TB, rdb redis.UniversalClient, m *manyDB, prefix string) *Loader[manyRow] {
	t.Helper()
	l, err := NewBatch(rdb, "row", m.load, &Options{Prefix: prefix, RedisTimeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func ids(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

func TestGetManyIntegration(t *testing.T) {
	rdb := testenv.Redis(t, "")
	ctx := context.Background()

	t.Run("batch", func(t *testing.T) {
		m := newManyDB(t, 300)
		l := newManyLoader(t, rdb, m, testenv.Prefix(t, rdb, "cachetest:"))
		for _, k := range ids(1, 50) {
			_, err := l.Get(ctx, k)
			require.NoError(t, err)
		}
		require.EqualValues(t, 50, m.calls.Load())
		keys := append(ids(1, 320), "7", "310") // 301..320 have no row; duplicates
		got, err := l.GetMany(ctx, keys)
		require.NoError(t, err)
		require.Len(t, got, 300)
		for k, r := range got {
			require.Equal(t, "v"+k, r.Val)
		}
		require.EqualValues(t, 51, m.calls.Load(), "one query for all misses")
		require.EqualValues(t, 50+270, m.keys.Load(), "exactly the misses, each once")

		before := l.Stats()
		got, err = l.GetMany(ctx, keys)
		require.NoError(t, err)
		require.Len(t, got, 300)
		require.EqualValues(t, 51, m.calls.Load(), "all hits")
		d := l.Stats().minus(before)
		require.EqualValues(t, 300, d.Hits)
		require.EqualValues(t, 20, d.NegativeHits)
		require.Zero(t, l.Stats().RedisErrors)
	})

	t.Run("processes", func(t *testing.T) {
		// Four processes ask for the same 400 cold keys at once: every key
		// is loaded once in all, each by the process holding its lease.
		const procs, n = 4, 400
		m := newManyDB(t, n)
		m.delay = 30 * time.Millisecond
		prefix := testenv.Prefix(t, rdb, "cachetest:")
		var loaders []*Loader[manyRow]
		for range procs {
			loaders = append(loaders, newManyLoader(t, testenv.Redis(t, ""), m, prefix))
		}
		keys := ids(1, n)
		var wg sync.WaitGroup
		results := make([]map[string]manyRow, procs)
		errs := make([]error, procs)
		gate := make(chan struct{})
		for i, l := range loaders {
			wg.Go(func() {
				<-gate
				shuffled := slices.Clone(keys)
				rand.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
				results[i], errs[i] = l.GetMany(ctx, shuffled)
			})
		}
		close(gate)
		wg.Wait()
		for i := range procs {
			require.NoError(t, errs[i])
			require.Len(t, results[i], n)
		}
		require.EqualValues(t, n, m.keys.Load(), "each key loaded once across the processes")
		require.LessOrEqual(t, m.calls.Load(), int64(procs))
		s := sumStats(loaders)
		require.EqualValues(t, procs*n, s.Misses)
		require.Zero(t, s.RedisErrors)
	})

	t.Run("race", func(t *testing.T) {
		// Writers update rows and invalidate them while readers GetMany
		// them. No GetMany may return a version older than one whose
		// invalidation completed before it began (P3b); after the writers
		// stop, every cached entry equals the database (P3).
		const nkeys, procs, readers, writers = 20, 2, 4, 2
		m := newManyDB(t, nkeys)
		m.delay = 2 * time.Millisecond
		prefix := testenv.Prefix(t, rdb, "cachetest:")
		var loaders []*Loader[manyRow]
		for range procs {
			loaders = append(loaders, newManyLoader(t, testenv.Redis(t, ""), m, prefix))
		}
		keys := ids(1, nkeys)
		var committed [nkeys + 1]atomic.Int64 // version invalidated, by id
		for i := range committed {
			committed[i].Store(1)
		}
		stop := make(chan struct{})
		var stale, reads atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, readers+writers)
		for w := range writers {
			wg.Go(func() {
				l := loaders[w%procs]
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					id := 1 + rand.IntN(nkeys)
					v, err := m.update(ctx, strconv.Itoa(id))
					if err == nil {
						err = l.Invalidate(ctx, strconv.Itoa(id))
					}
					if err != nil {
						errc <- err
						return
					}
					for { // record the highest version invalidated
						old := committed[id].Load()
						if v <= old || committed[id].CompareAndSwap(old, v) {
							break
						}
					}
					time.Sleep(time.Millisecond)
				}
			})
		}
		for r := range readers {
			wg.Go(func() {
				l := loaders[r%procs]
				for {
					select {
					case <-stop:
						return
					default:
					}
					var floor [nkeys + 1]int64
					for i := range floor {
						floor[i] = committed[i].Load()
					}
					got, err := l.GetMany(ctx, keys)
					if err != nil {
						errc <- err
						return
					}
					for k, row := range got {
						reads.Add(1)
						if row.Ver < floor[row.ID] {
							stale.Add(1)
							errc <- fmt.Errorf("key %s: read version %d after version %d was invalidated", k, row.Ver, floor[row.ID])
							return
						}
					}
				}
			})
		}
		time.Sleep(2 * time.Second)
		close(stop)
		wg.Wait()
		close(errc)
		for err := range errc {
			require.NoError(t, err)
		}
		require.Zero(t, stale.Load())
		require.Greater(t, reads.Load(), int64(1000))
		t.Logf("%d reads, %d batch loads of %d keys", reads.Load(), m.calls.Load(), m.keys.Load())

		// P3: once the writers stopped, what is cached is the database.
		want, err := m.versions(ctx)
		require.NoError(t, err)
		for _, l := range loaders {
			got, err := l.GetMany(ctx, keys)
			require.NoError(t, err)
			for k, r := range got {
				require.Equal(t, want[k], r.Ver, "key %s", k)
			}
		}
	})
}

func TestGetManyCluster(t *testing.T) {
	cl := testenv.Cluster(t)
	ctx := context.Background()
	client := func() *redis.ClusterClient {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Options().Addrs, ContextTimeoutEnabled: true})
		t.Cleanup(func() { c.Close() })
		return c
	}
	// byMaster groups rkeys by the master serving them.
	byMaster := func(rkeys []string) map[string][]string {
		by := map[string][]string{}
		for _, k := range rkeys {
			m, err := cl.MasterForKey(ctx, k)
			require.NoError(t, err)
			by[m.Options().Addr] = append(by[m.Options().Addr], k)
		}
		return by
	}

	t.Run("batch", func(t *testing.T) {
		bt := newBatchTable()
		const n = 60
		var keys, rkeys []string
		want := map[string]row{}
		prefix := testenv.Prefix(t, cl, "cachetest:")
		l := newBatchLoader(t, client(), bt, &Options{Prefix: prefix, RedisTimeout: time.Second})
		for i := range n {
			k := "g" + strconv.Itoa(i)
			keys = append(keys, k)
			rkeys = append(rkeys, l.Key(k))
			want[k] = bt.put(k, "v"+strconv.Itoa(i))
		}
		require.Len(t, byMaster(rkeys), 3, "the keys cover every master")
		ask := append(slices.Clone(keys), "missing-a", "missing-b", "g3")

		got, err := l.GetMany(ctx, ask)
		require.NoError(t, err)
		require.Equal(t, want, got)
		calls := bt.takeCalls()
		require.Len(t, calls, 1, "one batch load for the misses of every node")
		require.Len(t, calls[0], n+2)

		before := l.Stats()
		got, err = l.GetMany(ctx, ask)
		require.NoError(t, err)
		require.Equal(t, want, got)
		require.Empty(t, bt.takeCalls())
		d := l.Stats().minus(before)
		require.EqualValues(t, n, d.Hits)
		require.EqualValues(t, 2, d.NegativeHits)

		// Invalidated keys on every master are reloaded in one call, after
		// the scripts were flushed everywhere (NOSCRIPT on every node).
		var changed []string
		for i := 0; i < n; i += 4 {
			changed = append(changed, keys[i])
			want[keys[i]] = bt.put(keys[i], "changed")
		}
		require.NoError(t, l.Invalidate(ctx, changed...))
		require.NoError(t, cl.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.ScriptFlush(ctx).Err()
		}))
		got, err = l.GetMany(ctx, ask)
		require.NoError(t, err)
		require.Equal(t, want, got)
		calls = bt.takeCalls()
		require.Len(t, calls, 1)
		require.Equal(t, slices.Sorted(slices.Values(changed)), calls[0])
		require.Zero(t, l.Stats().RedisErrors)
		got, err = l.GetMany(ctx, ask)
		require.NoError(t, err)
		require.Equal(t, want, got)
		require.Empty(t, bt.takeCalls(), "the reloaded keys were filled")
	})

	t.Run("processes", func(t *testing.T) {
		// Three processes GetMany the same cold keys spread over every
		// master: each key is loaded once in all.
		bt := newBatchTable()
		const procs, n = 3, 150
		var keys []string
		for i := range n {
			k := "p" + strconv.Itoa(i)
			keys = append(keys, k)
			bt.put(k, "v")
		}
		bt.afterRead = func(int) { time.Sleep(20 * time.Millisecond) }
		prefix := testenv.Prefix(t, cl, "cachetest:")
		var loaders []*Loader[row]
		for range procs {
			loaders = append(loaders, newBatchLoader(t, client(), bt, &Options{Prefix: prefix, RedisTimeout: time.Second}))
		}
		var wg sync.WaitGroup
		errs := make([]error, procs)
		lens := make([]int, procs)
		for i, l := range loaders {
			wg.Go(func() {
				got, err := l.GetMany(ctx, keys)
				lens[i], errs[i] = len(got), err
			})
		}
		wg.Wait()
		for i := range procs {
			require.NoError(t, errs[i])
			require.Equal(t, n, lens[i])
		}
		total := 0
		for _, c := range bt.takeCalls() {
			total += len(c)
		}
		require.Equal(t, n, total, "each key loaded once across the processes")
		require.Zero(t, sumStats(loaders).RedisErrors)
	})
}
