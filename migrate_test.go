package cache

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

type userV1 struct {
	Name string `json:"name"`
}

type userV2 struct {
	FullName string `json:"full_name"`
}

// migrateUser converts a v1 payload into v2's shape.
func migrateUser(old []byte) ([]byte, error) {
	var u userV1
	if err := json.Unmarshal(old, &u); err != nil {
		return nil, err
	}
	if u.Name == "" {
		return nil, errors.New("no name")
	}
	return json.Marshal(userV2{FullName: u.Name})
}

// TestKeyFormatMigrationKeepsHitRate: a rollout moves users from
// "v1:user:" (shape v1) to "v2:user:" (shape v2); the first pass over the
// warmed v1 namespace is answered from it, not from the database.
func TestKeyFormatMigrationKeepsHitRate(t *testing.T) {
	onBothRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		base := testenv.Prefix(t, rdb, "cachetest:")
		ctx := context.Background()
		v1, err := New(rdb, "user", func(_ context.Context, k string) (userV1, error) {
			return userV1{Name: "user " + k}, nil
		}, &Options{Prefix: base + "v1:", TTL: time.Hour, RedisTimeout: relaxedTimeout})
		require.NoError(t, err)
		defer v1.Close()
		for i := range 100 {
			_, err := v1.Get(ctx, strconv.Itoa(i))
			require.NoError(t, err)
		}

		var loads atomic.Int64
		v2, err := New(rdb, "user", func(_ context.Context, k string) (userV2, error) {
			loads.Add(1)
			return userV2{FullName: "user " + k}, nil
		}, &Options{Prefix: base + "v2:", TTL: time.Hour, PreviousKeyPrefix: base + "v1:user#2:", Migrate: migrateUser,
			RedisTimeout: relaxedTimeout}) // the exact counts below must not depend on the machine's load
		require.NoError(t, err)
		defer v2.Close()

		for i := range 100 {
			u, err := v2.Get(ctx, strconv.Itoa(i))
			require.NoError(t, err)
			require.Equal(t, userV2{FullName: "user " + strconv.Itoa(i)}, u)
		}
		s := v2.Stats()
		t.Logf("first pass: %d migrated, %d database loads", s.Migrated, loads.Load())
		require.GreaterOrEqual(t, 100-loads.Load(), int64(95), "hit rate of the first pass ≥ 95%")
		require.EqualValues(t, 100, s.Migrated)
		ttl := rdb.PTTL(ctx, v2.Key("7")).Val()
		require.Greater(t, ttl, 50*time.Minute, "the previous entry's remaining TTL carries over")
		require.LessOrEqual(t, ttl, 66*time.Minute)

		for i := range 100 {
			_, err := v2.Get(ctx, strconv.Itoa(i))
			require.NoError(t, err)
		}
		require.EqualValues(t, 100, v2.Stats().Hits, "the second pass hits the new format")
	})
}

func TestKeyFormatMigrationDeclines(t *testing.T) {
	_, rdb := fakeRedis(t)
	ctx := context.Background()
	v1, err := New(rdb, "user", func(_ context.Context, k string) (userV1, error) {
		if k == "nameless" {
			return userV1{}, nil
		}
		return userV1{Name: "old " + k}, nil
	}, &Options{Prefix: "v1:"})
	require.NoError(t, err)
	defer v1.Close()
	for _, k := range []string{"a", "b", "nameless"} {
		_, err := v1.Get(ctx, k)
		require.NoError(t, err)
	}
	var loads atomic.Int64
	v2, err := New(rdb, "user", func(_ context.Context, k string) (userV2, error) {
		loads.Add(1)
		return userV2{FullName: "db " + k}, nil
	}, &Options{Prefix: "v2:", PreviousKeyPrefix: "v1:user#2:", Migrate: migrateUser})
	require.NoError(t, err)
	defer v2.Close()

	// A tombstone in the new format: the previous entry may predate the
	// invalidation, so it is not used. Invalidate also reached it.
	require.NoError(t, v2.Invalidate(ctx, "a"))
	require.Zero(t, rdb.Exists(ctx, "v1:user#2:a").Val(), "the previous format's entry is dropped too")
	u, err := v2.Get(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, "db a", u.FullName)

	u, err = v2.Get(ctx, "nameless") // Migrate fails: load
	require.NoError(t, err)
	require.Equal(t, "db nameless", u.FullName)

	u, err = v2.Get(ctx, "c") // nothing in the previous format: load
	require.NoError(t, err)
	require.Equal(t, "db c", u.FullName)

	u, err = v2.Get(ctx, "b")
	require.NoError(t, err)
	require.Equal(t, "old b", u.FullName)
	require.EqualValues(t, 3, loads.Load())
	require.EqualValues(t, 1, v2.Stats().Migrated)

	// Writes in the new format invalidate the previous one.
	require.NoError(t, v2.Set(ctx, "b", userV2{FullName: "new b"}))
	require.Zero(t, rdb.Exists(ctx, "v1:user#2:b").Val())

	_, err = New(rdb, "user", func(context.Context, string) (userV2, error) { return userV2{}, nil },
		&Options{Prefix: "v2:", PreviousKeyPrefix: "v2:user#2:"})
	require.ErrorContains(t, err, "PreviousKeyPrefix")
}

// TestUpgradeFromHashEntries: a fleet upgrading from the releases before
// entry format 2 (one hash per entry at Prefix+name+":"+key). The new
// release keeps its entries at other keys, so neither release treats the
// other's entries as corrupt; with PreviousKeyPrefix naming the old keys,
// the new release's first pass is answered from the old entries, and its
// writes drop them, so the old processes reload what changed.
func TestUpgradeFromHashEntries(t *testing.T) {
	onBothRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		base := testenv.Prefix(t, rdb, "cachetest:")
		ctx := context.Background()
		// What an old release left: fresh entries, and the hash fields its
		// scripts wrote (payload, generation, version, soft expiry, load
		// time).
		now := time.Now().UnixMilli()
		old := func(k string) string { return base + "user:" + k }
		for i := range 50 {
			k := strconv.Itoa(i)
			require.NoError(t, rdb.HSet(ctx, old(k), "p", `{"val":"old `+k+`","ver":1}`, "g", now*1000, "v", 1,
				"s", now+3_600_000, "d", 2).Err())
			require.NoError(t, rdb.PExpire(ctx, old(k), time.Hour).Err())
		}
		tb := newTable()
		for i := range 50 {
			tb.put(strconv.Itoa(i), "db")
		}
		l := newLoader(t, rdb, tb, &Options{Prefix: base, TTL: time.Hour, PreviousKeyPrefix: base + "user:", RedisTimeout: relaxedTimeout})
		require.NotEqual(t, old("1"), l.Key("1"), "the formats live at different keys")
		for i := range 50 {
			v, err := l.Get(ctx, strconv.Itoa(i))
			require.NoError(t, err)
			require.Equal(t, "old "+strconv.Itoa(i), v.Val)
		}
		require.Zero(t, tb.loads.Load(), "the first pass is answered from the old entries")
		require.EqualValues(t, 50, l.Stats().Migrated)
		require.Zero(t, l.Stats().CorruptEntries)
		require.Equal(t, "hash", rdb.Type(ctx, old("1")).Val(), "reads leave the old release's entries alone")

		// A write in the new release drops the old entry: the old
		// processes' next read loads the row.
		require.NoError(t, l.Invalidate(ctx, "1"))
		require.Zero(t, rdb.Exists(ctx, old("1")).Val())
		v, err := l.Get(ctx, "1")
		require.NoError(t, err)
		require.Equal(t, "db", v.Val)
		require.EqualValues(t, 1, tb.loads.Load())
	})
}
