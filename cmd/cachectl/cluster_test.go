package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/internal/testenv"
)

// runCluster runs cachectl in-process against the cluster whose seed
// addresses are seeds (-redis ADDR,ADDR,...), decoding its -json output
// into v.
func runCluster(t *testing.T, v any, seeds []string, args ...string) {
	t.Helper()
	var o, e bytes.Buffer
	all := append([]string{"-redis", strings.Join(seeds, ","), "-json"}, args...)
	if code := run(context.Background(), all, &o, &e); code != exitOK {
		t.Fatalf("cachectl %v: exit %d: %s%s", all, code, e.String(), o.String())
	}
	if err := json.Unmarshal(o.Bytes(), v); err != nil {
		t.Fatalf("cachectl %v: %v in %s", all, err, o.String())
	}
}

// TestCluster runs the commands against a local Redis Cluster (3 masters,
// 3 replicas): ttl must SCAN every master, the per-key commands must reach
// the master that serves the key, and health must report every master.
func TestCluster(t *testing.T) {
	rdb := testenv.Cluster(t)
	ctx := context.Background()
	seeds := rdb.Options().Addrs
	db := realMySQL(t)
	table := "cachectl_users_" + randHex(4)
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + table) })
	if _, err := db.Exec("CREATE TABLE " + table + " (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, version BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	prefix := uniquePrefix(t, rdb)
	users, err := cache.New(rdb, "user", func(ctx context.Context, id string) (User, error) {
		var u User
		err := db.QueryRowContext(ctx, "SELECT id, name, version FROM "+table+" WHERE id = ?", id).Scan(&u.ID, &u.Name, &u.Version)
		return u, err
	}, &cache.Options{Prefix: prefix, TTL: time.Hour, DisableJitter: true})
	if err != nil {
		t.Fatal(err)
	}
	defer users.Close()

	// 60 entries, spread over the masters; their TTLs are all alike.
	const n = 60
	byMaster := map[string][]string{} // master → full keys
	fillStart := time.Now()
	for i := range n {
		id := strconv.Itoa(i)
		if _, err := db.Exec("INSERT INTO "+table+" (id, name, version) VALUES (?, ?, 1)", i, "u"+id); err != nil {
			t.Fatal(err)
		}
		// A Get whose Redis calls time out on a busy machine fails open
		// and stores nothing: Get again until the entry is there.
		for try := 0; ; try++ {
			if _, err := users.Get(ctx, id); err != nil {
				t.Fatal(err)
			}
			if n, err := rdb.Exists(ctx, users.Key(id)).Result(); err == nil && n == 1 {
				break
			}
			if try == 100 {
				t.Fatalf("entry of %s never stored", id)
			}
			time.Sleep(10 * time.Millisecond)
		}
		m, err := rdb.MasterForKey(ctx, users.Key(id))
		if err != nil {
			t.Fatal(err)
		}
		byMaster[m.Options().Addr] = append(byMaster[m.Options().Addr], users.Key(id))
	}
	// On a busy machine the fill may take longer than ttl's 1s window:
	// then only the keys filled within one window are sure to share it.
	fillTook := time.Since(fillStart)
	if len(byMaster) != 3 {
		t.Fatalf("the keys cover %d masters, want 3", len(byMaster))
	}
	for m, ks := range byMaster {
		t.Logf("master %s: %d keys", m, len(ks))
	}
	pattern := prefix + "user#2:*"

	t.Run("ttl", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			seeds []string
			flags []string
		}{
			{"every seed", seeds, nil},
			{"one seed and -cluster", seeds[:1], []string{"-cluster"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var r ttlReport
				runCluster(t, &r, tc.seeds, append(tc.flags, "ttl", pattern, "-sample", "1000")...)
				wantPeak := n
				if fillTook > 900*time.Millisecond {
					wantPeak = 1 // at least one window holds a synchronized group; logged below
					t.Logf("the fill took %v: peak %d of %d keys in 1s", fillTook, r.PeakCount, n)
				}
				if r.Sampled != n || len(r.Nodes) != 3 || r.PeakCount < wantPeak || (wantPeak == n && !r.Synced) {
					t.Errorf("ttl over the cluster (fill took %v): %+v", fillTook, r)
				}
				for m := range byMaster {
					if !strings.Contains(strings.Join(r.Nodes, " "), m) {
						t.Errorf("master %s not scanned: %v", m, r.Nodes)
					}
				}
			})
		}
		// A smaller sample is spread over the masters and bounded.
		var r ttlReport
		runCluster(t, &r, seeds, "ttl", pattern, "-sample", "30")
		if r.Sampled != 30 || len(r.Nodes) != 3 {
			t.Errorf("-sample 30: %+v", r)
		}
		// One master only, as cachectl saw the cluster before: a third.
		var one ttlReport
		for m, ks := range byMaster {
			var o, e bytes.Buffer
			if code := run(ctx, []string{"-redis", m, "-json", "ttl", pattern}, &o, &e); code != exitOK {
				t.Fatalf("ttl on %s: exit %d: %s", m, code, e.String())
			}
			if err := json.Unmarshal(o.Bytes(), &one); err != nil {
				t.Fatal(err)
			}
			if one.Sampled != len(ks) {
				t.Errorf("ttl on the master %s alone: %d keys, it holds %d", m, one.Sampled, len(ks))
			}
			break
		}
	})

	t.Run("inspect_compare_warm_invalidate", func(t *testing.T) {
		var stdinKeys strings.Builder
		for m, ks := range byMaster {
			key := ks[0]
			id := strings.TrimPrefix(key, prefix+"user#2:")
			var r entryReport
			runCluster(t, &r, seeds, "inspect", key)
			if r.State != "value" || r.Version != 1 || !r.Fresh || !strings.Contains(r.Preview, `"u`+id+`"`) {
				t.Errorf("inspect %s (on %s): %+v", key, m, r)
			}
			if r.SoftTTLMs == nil || *r.SoftTTLMs <= 50*60*1000 {
				t.Errorf("inspect %s: soft TTL %v, want about 1h by the master's clock", key, r.SoftTTLMs)
			}
			var c compareReport
			runCluster(t, &c, seeds, "compare", key, "-dsn", mysqlDSN(),
				"-query", "SELECT id, name, version FROM "+table+" WHERE id = ?", "-arg", id)
			if !c.Agree || c.RowVersion == nil || *c.RowVersion != 1 {
				t.Errorf("compare %s: %+v", key, c)
			}
			fmt.Fprintln(&stdinKeys, key)
			fmt.Fprintln(&stdinKeys, ks[1])
		}

		// Invalidate one key per master; warm sees them cold.
		var invalidated []string
		for _, ks := range byMaster {
			invalidated = append(invalidated, ks[0])
		}
		var res []invalidateResult
		runCluster(t, &res, seeds, append([]string{"invalidate", "-tombstone", "5s"}, invalidated...)...)
		for _, r := range res {
			if !r.Invalidated {
				t.Errorf("invalidate: %+v", r)
			}
		}
		for _, key := range invalidated {
			var r entryReport
			runCluster(t, &r, seeds, "inspect", key)
			if !r.Invalidated || r.State != "tombstone" || r.Version != 1 {
				t.Errorf("after invalidate %s: %+v", key, r)
			}
		}
		stdin = strings.NewReader(stdinKeys.String())
		defer func() { stdin = os.Stdin }()
		var w warmReport
		runCluster(t, &w, seeds, "warm", "-all")
		if w.Total != 6 || w.Cold != 3 || w.Fresh != 3 {
			t.Errorf("warm: %+v", w)
		}
	})

	t.Run("health", func(t *testing.T) {
		var rs []healthReport
		runCluster(t, &rs, seeds, "health", "-pings", "2")
		if len(rs) != 3 {
			t.Fatalf("health reports %d servers, want the 3 masters: %+v", len(rs), rs)
		}
		for _, r := range rs {
			if _, ok := byMaster[r.Addr]; !ok || r.RedisVersion == "" || r.Clients < 1 {
				t.Errorf("health: %+v", r)
			}
		}
		var o, e bytes.Buffer
		if code := run(ctx, []string{"-redis", strings.Join(seeds, ","), "health"}, &o, &e); code != exitOK ||
			strings.Count(o.String(), "redis:            ") != 3 {
			t.Errorf("health, human: exit %d\n%s%s", code, o.String(), e.String())
		}
	})
}

// Not a cluster: -cluster against a single server is an error, not a hang.
func TestClusterFlagOnPlainRedis(t *testing.T) {
	realRedis(t) // skips without a server
	var o, e bytes.Buffer
	start := time.Now()
	code := run(context.Background(), []string{"-redis", redisAddr(), "-cluster", "-timeout", "2s", "ttl", "nosuch:*"}, &o, &e)
	if code != exitError {
		t.Errorf("-cluster on a plain server: exit %d, want 1: %s%s", code, o.String(), e.String())
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
	t.Logf("%s", e.String())
}
