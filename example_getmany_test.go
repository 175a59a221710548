package cache_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/f4df6ac3/cache"
)

// usersByIDs stands in for SELECT id, name, version FROM users WHERE id IN
// (…): ids without a row are simply absent from the map.
func usersByIDs(ctx context.Context, ids []string) (map[string]User, error) {
	sorted := slices.Sorted(slices.Values(ids))
	fmt.Printf("SELECT … WHERE id IN (%s)\n", strings.Join(sorted, ", "))
	m := make(map[string]User, len(ids))
	for _, id := range ids {
		if u, ok := users[id]; ok {
			m[id] = u
		}
	}
	return m, nil
}

func ExampleNewBatch() {
	seed()
	users["7"] = User{ID: "7", Name: "Grace", Version: 1}
	rdb, done := newRedis()
	defer done()
	loader := cache.Must(cache.NewBatch(rdb, "user", usersByIDs, &cache.Options{TTL: time.Minute}))
	defer loader.Close()
	ctx := context.Background()

	u, _ := loader.Get(ctx, "42") // Get loads a batch of one
	fmt.Println(u.Name)

	// 42 is a hit; 7 and 99 are loaded by one query; 99 has no row.
	found, err := loader.GetMany(ctx, []string{"42", "7", "99", "7"})
	fmt.Println(len(found), found["42"].Name, found["7"].Name, err)

	// Everything is cached now, 99 as "not found".
	found, _ = loader.GetMany(ctx, []string{"42", "7", "99"})
	fmt.Println(len(found))
	// Output:
	// SELECT … WHERE id IN (42)
	// Ada
	// SELECT … WHERE id IN (7, 99)
	// 2 Ada Grace <nil>
	// 2
}
