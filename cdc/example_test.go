package cdc_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/cdc"
)

// A relay that invalidates a Loader's entries when rows of `users` change,
// however they change. Run it in every instance of the service: one leads,
// the others are standbys.
func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
	db, _ := sql.Open("mysql", "app@tcp(127.0.0.1:3306)/app")
	users := cache.Must(cache.New(rdb, "user", func(ctx context.Context, key string) (user, error) {
		return loadUser(ctx, db, "users", key)
	}, nil))

	relay, err := cdc.New("cdc@tcp(127.0.0.1:3306)/app", []cdc.Rule{
		{Table: "users", Target: users, KeyColumn: "id", VersionColumn: "version"},
		// A key built from several columns:
		{Table: "sims", Target: users, Key: func(row cdc.Row) (string, bool, error) {
			tenant, _ := row.Value("tenant")
			iccid, _ := row.Value("iccid")
			if tenant == nil || iccid == nil {
				return "", false, nil
			}
			return fmt.Sprintf("%v:%v", tenant, iccid), true, nil
		}},
	}, &cdc.Options{Name: "app-users"})
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()
	go func() {
		if err := relay.Run(context.Background()); err != nil {
			log.Print(err) // ErrSettings: the server cannot be followed
		}
	}()
}
