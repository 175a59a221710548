// Command likes serves a "likes" counter over HTTP, the case write-behind
// is for: far more writes than the database should take one by one.
//
//	POST   /posts/{id}/like    counts +1 in Redis (writebehind.Counter.Add)
//	DELETE /posts/{id}/like    counts -1
//	GET    /posts/{id}/likes   {"post":"…","likes":n}: the row, read through
//	                           a cache.Loader, plus the deltas not flushed yet
//
// A writebehind.Flusher in the same process applies the counted deltas to
// MySQL about once a second, each batch in one transaction (one upsert
// statement per 1,000 posts), and invalidates the Loader's entries of the
// posts it changed. Several copies of the program may run against the same
// Redis and MySQL: their flushers share the work and take over each
// other's after a crash.
//
// A like that Redis cannot count is refused with 503: the caller (the
// browser) retries, or gives up. It is never silently dropped. A request
// with an Idempotency-Key header counts once however often it is retried
// (within writebehind's TokenTTL, a minute by default).
//
// Run it against a MySQL or MariaDB and a Redis (appendonly yes for the
// stated loss bound, see writebehind's README):
//
//	go run ./examples/likes -dsn 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379 -addr :8080
//	curl -X POST localhost:8080/posts/42/like; curl localhost:8080/posts/42/likes
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"github.com/f4df6ac3/cache"
	"github.com/f4df6ac3/cache/writebehind"
)

// Likes is the service: the counter for writes, the Loader for the
// flushed value, the flusher between them.
type Likes struct {
	db      *sql.DB
	table   string
	counter *writebehind.Counter
	loader  *cache.Loader[int64]
	flusher *writebehind.Flusher
}

// Options configure Likes.
type Options struct {
	Table        string        // the likes table (created by Setup); default "post_likes"
	AppliedTable string        // writebehind's applied table (created by Setup); default writebehind.DefaultTable
	Prefix       string        // Redis key prefix of the Loader and the counter; default "likes:"
	Interval     time.Duration // between flushes; default writebehind's (1s)
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// New builds the service on db and rdb and creates its tables if missing.
func New(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, o Options) (*Likes, error) {
	if o.Table == "" {
		o.Table = "post_likes"
	}
	if o.Prefix == "" {
		o.Prefix = "likes:"
	}
	if !tableName.MatchString(o.Table) { // spliced into SQL
		return nil, fmt.Errorf("invalid table name %q", o.Table)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+o.Table+
		" (post VARCHAR(64) NOT NULL PRIMARY KEY, likes BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		return nil, err
	}
	if err := writebehind.Migrate(ctx, db, o.AppliedTable); err != nil {
		return nil, err
	}
	s := &Likes{db: db, table: o.Table}
	var err error
	// The read path: the flushed value, cached. A post nobody liked has no
	// row: that is 0 likes, not "not found".
	s.loader, err = cache.New(rdb, "post-likes", func(ctx context.Context, post string) (int64, error) {
		var n int64
		err := db.QueryRowContext(ctx, "SELECT likes FROM "+o.Table+" WHERE post = ?", post).Scan(&n)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, nil
		}
		return n, err
	}, &cache.Options{Prefix: o.Prefix, TTL: time.Minute})
	if err != nil {
		return nil, err
	}
	// The write path: counted in Redis, Get = the cached row + the pending deltas.
	s.counter, err = writebehind.New(rdb, "post-likes", &writebehind.Options{
		Prefix: o.Prefix,
		Read:   func(ctx context.Context, post string) (int64, error) { return s.loader.Get(ctx, post) },
	})
	if err != nil {
		s.loader.Close()
		return nil, err
	}
	s.flusher, err = s.counter.NewFlusher(db, s.apply, &writebehind.FlusherOptions{
		Table:    o.AppliedTable,
		Interval: o.Interval,
		// After a batch, the cached rows of its posts are stale: drop them.
		OnFlushed: func(ctx context.Context, batch []writebehind.Delta) error {
			keys := make([]string, len(batch))
			for i, d := range batch {
				keys[i] = d.Key
			}
			return s.loader.Invalidate(ctx, keys...)
		},
	})
	if err != nil {
		s.loader.Close()
		return nil, err
	}
	return s, nil
}

// apply adds a batch of deltas to the likes table: one upsert per 1,000
// posts, inside the flusher's transaction.
func (s *Likes) apply(ctx context.Context, tx *sql.Tx, batch []writebehind.Delta) error {
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), 1000)]
		batch = batch[len(chunk):]
		q := "INSERT INTO " + s.table + " (post, likes) VALUES " +
			strings.TrimSuffix(strings.Repeat("(?,?),", len(chunk)), ",") +
			" ON DUPLICATE KEY UPDATE likes = likes + VALUES(likes)"
		args := make([]any, 0, 2*len(chunk))
		for _, d := range chunk {
			args = append(args, d.Key, d.Delta)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return err
		}
	}
	return nil
}

// Run flushes until ctx ends.
func (s *Likes) Run(ctx context.Context) error { return s.flusher.Run(ctx) }

// Flusher returns the service's flusher (for tests and metrics).
func (s *Likes) Flusher() *writebehind.Flusher { return s.flusher }

// Close releases the Loader.
func (s *Likes) Close() error { return s.loader.Close() }

var postID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Handler serves the three routes.
func (s *Likes) Handler() http.Handler {
	mux := http.NewServeMux()
	like := func(delta int64) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			post := r.PathValue("id")
			if !postID.MatchString(post) {
				http.Error(w, "bad post id", http.StatusBadRequest)
				return
			}
			// A request id makes the browser's retry of this request count
			// once; without one, every request is a new like.
			var err error
			if rid := r.Header.Get("Idempotency-Key"); rid != "" {
				err = s.counter.AddOnce(r.Context(), post, delta, rid)
			} else {
				err = s.counter.Add(r.Context(), post, delta)
			}
			if err != nil {
				http.Error(w, "like not counted, try again", http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	}
	mux.HandleFunc("POST /posts/{id}/like", like(1))
	mux.HandleFunc("DELETE /posts/{id}/like", like(-1))
	mux.HandleFunc("GET /posts/{id}/likes", func(w http.ResponseWriter, r *http.Request) {
		post := r.PathValue("id")
		if !postID.MatchString(post) {
			http.Error(w, "bad post id", http.StatusBadRequest)
			return
		}
		n, err := s.counter.Get(r.Context(), post)
		if err != nil {
			http.Error(w, "likes unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct {
			Post  string `json:"post"`
			Likes int64  `json:"likes"`
		}{post, n})
	})
	return mux
}

func main() {
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3306)/test", "MySQL DSN")
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	listen := flag.String("addr", ":8080", "HTTP listen address")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	db, err := sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: *addr, ContextTimeoutEnabled: true})
	s, err := New(ctx, db, rdb, Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	go s.Run(ctx)
	srv := &http.Server{Addr: *listen, Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Printf("likes: listening on %s", *listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
