// Command mysql puts a cache.Loader in front of a MySQL repository.
//
// UserRepo is an ordinary repository: ByID reads a row, Rename updates it in
// a transaction and bumps its version column. CachedUsers wraps it: reads go
// through Loader.Get, writes through Loader.WriteThrough, and the version
// column (User implements cache.Versioned) keeps an older row from ever
// replacing a newer one in Redis.
//
// Run it against a MySQL or MariaDB and a Redis:
//
//	go run ./examples/mysql -dsn 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379
//
// It creates the table if missing (see testdata/users.sql for the schema),
// seeds four users, and prints what each call did.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"regexp"
	"strconv"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
)

// User is one row of the users table.
type User struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	Email   string `json:"email"`
	Version int64  `json:"version"`
}

// CacheVersion implements cache.Versioned with the row's version column,
// read in the same SELECT as the rest of the row.
func (u User) CacheVersion() int64 { return u.Version }

// UserRepo reads and writes users in MySQL. It knows nothing of the cache.
type UserRepo struct {
	db    *sql.DB
	table string
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// NewUserRepo returns a repository of the users in table.
func NewUserRepo(db *sql.DB, table string) (*UserRepo, error) {
	// The table name is spliced into the SQL, so only plain names are allowed.
	if !tableName.MatchString(table) {
		return nil, fmt.Errorf("invalid table name %q", table)
	}
	return &UserRepo{db: db, table: table}, nil
}

// Setup creates the table if it is missing and (re)writes the seed rows.
// A seed row that already exists gets its seed values back and a new
// version: versions never go backwards.
func (r *UserRepo) Setup(ctx context.Context) error {
	if _, err := r.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+r.table+` (
		id      BIGINT       NOT NULL PRIMARY KEY,
		name    VARCHAR(255) NOT NULL,
		email   VARCHAR(255) NOT NULL,
		version BIGINT       NOT NULL DEFAULT 1
	)`); err != nil {
		return fmt.Errorf("create table: %w", err)
	}
	if _, err := r.db.ExecContext(ctx, `INSERT INTO `+r.table+` (id, name, email) VALUES
		(1, 'Ada Lovelace', 'ada@example.com'),
		(2, 'Alan Turing', 'alan@example.com'),
		(3, 'Grace Hopper', 'grace@example.com'),
		(4, 'Edsger Dijkstra', 'edsger@example.com')
		ON DUPLICATE KEY UPDATE name = VALUES(name), email = VALUES(email), version = version + 1`); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

// ByID returns the user with id. A missing row is sql.ErrNoRows, which the
// cache turns into cache.ErrNotFound (and caches as a negative entry).
func (r *UserRepo) ByID(ctx context.Context, id int64) (User, error) {
	return scanUser(r.db.QueryRowContext(ctx,
		`SELECT id, name, email, version FROM `+r.table+` WHERE id = ?`, id))
}

// Rename sets the user's name, bumps its version, and returns the row as
// committed.
func (r *UserRepo) Rename(ctx context.Context, id int64, name string) (User, error) {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return User{}, err
	}
	defer tx.Rollback() // a no-op after Commit

	if _, err := tx.ExecContext(ctx,
		`UPDATE `+r.table+` SET name = ?, version = version + 1 WHERE id = ?`, name, id); err != nil {
		return User{}, err
	}
	// Re-read inside the transaction: the row we return is the row we wrote,
	// version included. A missing id fails here with sql.ErrNoRows.
	u, err := scanUser(tx.QueryRowContext(ctx,
		`SELECT id, name, email, version FROM `+r.table+` WHERE id = ?`, id))
	if err != nil {
		return User{}, err
	}
	if err := tx.Commit(); err != nil {
		return User{}, err
	}
	return u, nil
}

func scanUser(row *sql.Row) (User, error) {
	var u User
	err := row.Scan(&u.ID, &u.Name, &u.Email, &u.Version)
	return u, err
}

// CachedUsers is UserRepo behind Redis.
type CachedUsers struct {
	repo  *UserRepo
	cache *cache.Loader[User]
}

// NewCachedUsers wraps repo with a Loader named "user" on rdb.
func NewCachedUsers(repo *UserRepo, rdb redis.UniversalClient, opts *cache.Options) (*CachedUsers, error) {
	load := func(ctx context.Context, key string) (User, error) {
		id, err := strconv.ParseInt(key, 10, 64)
		if err != nil {
			return User{}, err
		}
		return repo.ByID(ctx, id)
	}
	l, err := cache.New(rdb, "user", load, opts)
	if err != nil {
		return nil, err
	}
	return &CachedUsers{repo: repo, cache: l}, nil
}

func userKey(id int64) string { return strconv.FormatInt(id, 10) }

// ByID returns the user with id, from Redis when it can.
func (c *CachedUsers) ByID(ctx context.Context, id int64) (User, error) {
	return c.cache.Get(ctx, userKey(id))
}

// Rename renames the user in MySQL and then stores the committed row in
// Redis. Once the commit succeeded it returns no Redis error.
func (c *CachedUsers) Rename(ctx context.Context, id int64, name string) (User, error) {
	return c.cache.WriteThrough(ctx, userKey(id), func(ctx context.Context) (User, error) {
		return c.repo.Rename(ctx, id, name)
	})
}

// Forget drops ids from Redis. Call it after any write that does not go
// through WriteThrough (a migration, a batch job, Setup below).
func (c *CachedUsers) Forget(ctx context.Context, ids ...int64) error {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = userKey(id)
	}
	return c.cache.Invalidate(ctx, keys...)
}

// Stats returns the cache's counters.
func (c *CachedUsers) Stats() cache.Stats { return c.cache.Stats() }

// Close stops the cache's background work.
func (c *CachedUsers) Close() error { return c.cache.Close() }

// run sets up the table and walks through the cache's read and write paths,
// printing each step to w. It returns the cache's final counters.
func run(ctx context.Context, w io.Writer, db *sql.DB, rdb redis.UniversalClient, table string, opts *cache.Options) (cache.Stats, error) {
	repo, err := NewUserRepo(db, table)
	if err != nil {
		return cache.Stats{}, err
	}
	if err := repo.Setup(ctx); err != nil {
		return cache.Stats{}, err
	}
	users, err := NewCachedUsers(repo, rdb, opts)
	if err != nil {
		return cache.Stats{}, err
	}
	defer users.Close()
	// Setup wrote the rows behind the cache's back, so tell the cache (and
	// forget the missing id too, so that every run starts cold).
	const missing = 404
	if err := users.Forget(ctx, 1, 2, 3, 4, missing); err != nil {
		return cache.Stats{}, err
	}

	get := func(what string, id int64) error {
		start := time.Now()
		u, err := users.ByID(ctx, id)
		if err != nil && !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		s := users.Stats()
		fmt.Fprintf(w, "%-24s %-50s %8v  loads=%d hits=%d negative_hits=%d\n",
			what, describe(u, err), time.Since(start).Round(10*time.Microsecond), s.Loads, s.Hits, s.NegativeHits)
		return nil
	}

	if err := get("get 1 (cold: load)", 1); err != nil {
		return cache.Stats{}, err
	}
	if err := get("get 1 (warm: hit)", 1); err != nil {
		return cache.Stats{}, err
	}
	u, err := users.Rename(ctx, 1, "Ada King")
	if err != nil {
		return cache.Stats{}, err
	}
	fmt.Fprintf(w, "%-24s %s\n", "rename 1 (write-through)", describe(u, nil))
	if err := get("get 1 (hit, new name)", 1); err != nil {
		return cache.Stats{}, err
	}
	if err := get("get 404 (missing: load)", missing); err != nil {
		return cache.Stats{}, err
	}
	if err := get("get 404 (negative hit)", missing); err != nil {
		return cache.Stats{}, err
	}
	s := users.Stats()
	fmt.Fprintf(w, "stats: %+v\n", s)
	return s, nil
}

func describe(u User, err error) string {
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d %q <%s> v%d", u.ID, u.Name, u.Email, u.Version)
}

func main() {
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3306)/test", "MySQL DSN (go-sql-driver/mysql format)")
	table := flag.String("table", "users_example", "table to create and use")
	flag.Parse()

	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// ContextTimeoutEnabled lets the cache's RedisTimeout bound every call;
	// without it a hung Redis holds a Get for seconds.
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := &cache.Options{Prefix: "example:", TTL: 10 * time.Minute}
	if _, err := run(ctx, os.Stdout, db, rdb, *table, opts); err != nil {
		log.Fatal(err)
	}
}
