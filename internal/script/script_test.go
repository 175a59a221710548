package script

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache/internal/entry"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// servers runs f against miniredis and the real Redis, with a key of its
// own on each.
func servers(t *testing.T, f func(t *testing.T, rdb *redis.Client, key string)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { rdb.Close() })
		f(t, rdb, "k")
	})
	t.Run("redis", func(t *testing.T) {
		rdb := testenv.Redis(t, "")
		f(t, rdb, testenv.Prefix(t, rdb, "scripttest:")+"k")
	})
}

// twice runs c, then runs it again as the client does after losing the
// reply, and requires both runs to answer the same and the second to leave
// the entry as the first did (but where same says otherwise).
func twice(t *testing.T, rdb *redis.Client, c Call, same func(a, b string) bool) *redis.Cmd {
	t.Helper()
	ctx := context.Background()
	first := c.Run(ctx, rdb)
	if first.Err() != nil {
		t.Fatalf("%s: %v", c.Name(), first.Err())
	}
	after1 := rdb.Get(ctx, c.Key).Val()
	again := c.Run(ctx, rdb)
	if again.Err() != nil {
		t.Fatalf("%s again: %v", c.Name(), again.Err())
	}
	after2 := rdb.Get(ctx, c.Key).Val()
	if r1, r2 := reply(t, first), reply(t, again); r1 != r2 {
		t.Fatalf("%s answered %s, then %s when run again", c.Name(), r1, r2)
	}
	if same == nil {
		same = func(a, b string) bool { return a == b }
	}
	if !same(after1, after2) {
		t.Fatalf("%s run again changed the entry:\n%q\n%q", c.Name(), after1, after2)
	}
	return first
}

// reply renders a reply for comparison; acquire's server clock is left out.
func reply(t *testing.T, c *redis.Cmd) string {
	t.Helper()
	if vals, err := c.Slice(); err == nil && len(vals) == 9 {
		vals = append([]any(nil), vals...)
		vals[4], vals[8] = nil, nil // the lease's remaining time and the clock move on
		return stringOf(vals)
	}
	n, err := c.Int64()
	if err != nil {
		t.Fatalf("reply %v: %v", c.Val(), err)
	}
	return stringOf(n)
}

func stringOf(v any) string { return fmt.Sprint(v) }

func decode(t *testing.T, s string) entry.Entry {
	t.Helper()
	e, err := entry.Decode(s, len(s))
	if err != nil {
		t.Fatalf("entry %q: %v", s, err)
	}
	return e
}

// sameButGeneration: the entries differ at most in their generation.
func sameButGeneration(a, b string) bool {
	return len(a) == len(b) && a[:3] == b[:3] && a[19:] == b[19:]
}

func TestEveryScriptAnswersTheSameWhenRunTwice(t *testing.T) {
	lease := 5 * time.Second
	fill := func(key, token string, version int64) Call {
		return FillCall(key, Fill{Token: token, Payload: []byte(`{"v":1}`), Version: version,
			KeyTTL: time.Minute, SoftTTL: 30 * time.Second, Delta: 3 * time.Millisecond})
	}
	t.Run("acquire grants the same lease", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			a, err := ParseAcquire(twice(t, rdb, Acquire(key, "tok-1", lease, ModeMiss, 0), nil))
			if err != nil || a.Status != Granted {
				t.Fatalf("%+v %v", a, err)
			}
			// Another caller's request is still refused: the lease is tok-1's.
			b, err := ParseAcquire(Acquire(key, "tok-2", lease, ModeMiss, 0).Run(context.Background(), rdb))
			if err != nil || b.Status != Held || b.Owner != "tok-1" {
				t.Fatalf("%+v %v", b, err)
			}
		})
	})
	t.Run("acquire of a fresh entry", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(context.Background(), rdb)
			fill(key, "tok-1", 1).Run(context.Background(), rdb)
			a, _ := ParseAcquire(twice(t, rdb, Acquire(key, "tok-2", lease, ModeMiss, 0), nil))
			if a.Status != Usable || a.Payload != `{"v":1}` {
				t.Fatalf("%+v", a)
			}
		})
	})
	t.Run("fill stores once", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(context.Background(), rdb)
			if n, _ := twice(t, rdb, fill(key, "tok-1", 2), nil).Int64(); n != Stored {
				t.Fatalf("fill: %d", n)
			}
			e := decode(t, rdb.Get(context.Background(), key).Val())
			if !e.Usable() || e.Version != 2 || e.LeaseOwner != "" {
				t.Fatalf("%+v", e)
			}
		})
	})
	t.Run("fill refused for an older version", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			ctx := context.Background()
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(ctx, rdb)
			fill(key, "tok-1", 5).Run(ctx, rdb)
			Invalidate(key, time.Minute, false, 0).Run(ctx, rdb)
			Acquire(key, "tok-2", lease, ModeMiss, 0).Run(ctx, rdb)
			if n, _ := twice(t, rdb, fill(key, "tok-2", 4), nil).Int64(); n != OlderValue {
				t.Fatalf("fill: %d", n)
			}
		})
	})
	t.Run("negative fill refused under a row floor", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			ctx := context.Background()
			Invalidate(key, time.Minute, false, 7).Run(ctx, rdb)
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(ctx, rdb)
			neg := FillCall(key, Fill{Token: "tok-1", Negative: true, KeyTTL: time.Minute})
			if n, _ := twice(t, rdb, neg, nil).Int64(); n != OlderValue {
				t.Fatalf("negative fill: %d", n)
			}
		})
	})
	t.Run("negative fill", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(context.Background(), rdb)
			neg := FillCall(key, Fill{Token: "tok-1", Negative: true, KeyTTL: time.Minute})
			if n, _ := twice(t, rdb, neg, nil).Int64(); n != Stored {
				t.Fatalf("negative fill: %d", n)
			}
		})
	})
	t.Run("release", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(context.Background(), rdb)
			if n, _ := twice(t, rdb, Release(key, "tok-1", ""), nil).Int64(); n != 1 {
				t.Fatalf("release: %d", n)
			}
			a, _ := ParseAcquire(Acquire(key, "tok-2", lease, ModeMiss, 0).Run(context.Background(), rdb))
			if a.Status != Granted {
				t.Fatalf("after the release: %+v", a)
			}
		})
	})
	t.Run("set stores once, even when the generation is checked", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			s := SetCall(key, Set{Payload: []byte(`{"v":9}`), Version: 9, KeyTTL: time.Minute, Tombstone: time.Minute,
				Generation: "0", Token: "set-1"})
			if n, _ := twice(t, rdb, s, nil).Int64(); n != Stored {
				t.Fatalf("set: %d", n)
			}
			e := decode(t, rdb.Get(context.Background(), key).Val())
			if !e.Usable() || e.Payload != `{"v":9}` {
				t.Fatalf("its own generation bump must not turn the set into a tombstone: %+v", e)
			}
		})
	})
	t.Run("set refused", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			Invalidate(key, time.Minute, false, 0).Run(context.Background(), rdb)
			s := SetCall(key, Set{Payload: []byte(`{}`), Version: 1, KeyTTL: time.Minute, Tombstone: time.Minute,
				Generation: "0", Token: "set-1"}) // the generation moved: refused
			if n, _ := twice(t, rdb, s, nil).Int64(); n != Refused {
				t.Fatalf("set: %d", n)
			}
		})
	})
	t.Run("invalidate", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			if n, _ := twice(t, rdb, Invalidate(key, time.Minute, false, 3), sameButGeneration).Int64(); n != 1 {
				t.Fatalf("invalidate: %d", n)
			}
		})
	})
	t.Run("evict", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			ctx := context.Background()
			Acquire(key, "tok-1", lease, ModeMiss, 0).Run(ctx, rdb)
			fill(key, "tok-1", 1).Run(ctx, rdb)
			e := decode(t, rdb.Get(ctx, key).Val())
			if n, _ := twice(t, rdb, Evict(key, e.Generation, e.Payload, false, time.Minute, "ev-1"), nil).Int64(); n != 1 {
				t.Fatalf("evict: %d", n)
			}
		})
	})
}

func TestVersionIsFixedWidth(t *testing.T) {
	for v, want := range map[int64]string{
		0: "0000000000000000000", 42: "0000000000000000042", 1<<63 - 1: "9223372036854775807",
	} {
		if got := Version(v); got != want {
			t.Errorf("Version(%d) = %q, want %q", v, got, want)
		}
	}
}

func TestTokensFitAndNameTheirHolder(t *testing.T) {
	a, b := NewToken(), NewToken()
	if a == b || len(a) > entry.TokenSize || len(b) > entry.TokenSize {
		t.Fatalf("tokens %q %q", a, b)
	}
	if want := holder; len(a) < entry.TokenSize && !endsWith(a, want) {
		t.Fatalf("token %q does not name its holder %q", a, want)
	}
}

func endsWith(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}

// The scripts find corrupt exactly what entry.Decode finds corrupt: an
// acquire never answers from an entry that a read in Go rejects (it grants
// a lease over it, as over an absent key), and one Decode accepts is
// answered from.
func TestScriptsTreatWhatDecodeRejectsAsAbsent(t *testing.T) {
	fresh := time.Now().Add(time.Hour).UnixMilli()
	good := entry.Header(entry.FlagPayload, 5, 1, fresh, 0, 0, "")
	garble := func(at int, with string) string { return good[:at] + with + good[at+len(with):] }
	plants := map[string]string{
		"negative entry with a payload": entry.Header(entry.FlagNegative|entry.FlagPayload, 5, 1, fresh, 0, 0, "") + `{}`,
		"payload without its flag":      entry.Header(0, 5, 1, fresh, 0, 0, "") + `{"v":1}`,
		"zero generation":               entry.Header(entry.FlagPayload, 0, 1, fresh, 0, 0, "") + `{"v":1}`,
		"flags 9, negative and payload": garble(2, "9") + `{"v":1}`,
		"uppercase hex flags":           garble(2, "F") + `{"v":1}`,
		"space in the generation":       garble(3, " ") + `{"v":1}`,
		"exponent in the soft expiry":   garble(38, "1e12000000000") + `{"v":1}`,
		"hex in the lease deadline":     garble(59, "0x") + `{"v":1}`,
		"truncated header":              good[:60],
		"no magic":                      garble(0, "c3") + `{"v":1}`,
	}
	for name, plant := range plants {
		t.Run(name, func(t *testing.T) {
			if _, err := entry.Decode(plant, 1<<20); err == nil {
				t.Fatalf("Decode accepts %q", plant)
			}
			servers(t, func(t *testing.T, rdb *redis.Client, key string) {
				ctx := context.Background()
				if err := rdb.Set(ctx, key, plant, time.Minute).Err(); err != nil {
					t.Fatal(err)
				}
				a, err := ParseAcquire(Acquire(key, "tok-1", time.Second, ModeMiss, 0).Run(ctx, rdb))
				if err != nil || a.Status != Granted {
					t.Fatalf("acquire over a corrupt entry: %+v %v", a, err)
				}
			})
		})
	}
	t.Run("a good entry is answered from", func(t *testing.T) {
		servers(t, func(t *testing.T, rdb *redis.Client, key string) {
			ctx := context.Background()
			if _, err := entry.Decode(good+`{"v":1}`, 1<<20); err != nil {
				t.Fatal(err)
			}
			rdb.Set(ctx, key, good+`{"v":1}`, time.Minute)
			a, err := ParseAcquire(Acquire(key, "tok-1", time.Second, ModeMiss, 0).Run(ctx, rdb))
			if err != nil || a.Status != Usable || a.Payload != `{"v":1}` {
				t.Fatalf("%+v %v", a, err)
			}
		})
	})
}
