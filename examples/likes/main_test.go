package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/f4df6ac3/cache/internal/testenv"
)

// These tests need a real Redis and MySQL/MariaDB (CACHE_REDIS_ADDR,
// CACHE_MYSQL_DSN); they skip when unreachable, except under CI.

func newService(t *testing.T) (*Likes, *httptest.Server) {
	t.Helper()
	rdb, db := testenv.Redis(t, ""), testenv.MySQL(t)
	s, err := New(context.Background(), db, rdb, Options{
		Table:        testenv.Table(t, db, "likes_example"),
		AppliedTable: testenv.Table(t, db, "likes_applied"),
		Prefix:       testenv.Prefix(t, rdb, "likes-example-test:"),
		Interval:     50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return s, srv
}

func do(t *testing.T, method, url string, header map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func likes(t *testing.T, srv *httptest.Server, post string) int64 {
	t.Helper()
	res := do(t, "GET", srv.URL+"/posts/"+post+"/likes", nil)
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET likes of %s: %s", post, res.Status)
	}
	var body struct{ Likes int64 }
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Likes
}

// Concurrent likes and unlikes over HTTP: the count is right before the
// flush (pending deltas), after it (the row, through the Loader), and the
// table holds it.
func TestLikes(t *testing.T) {
	s, srv := newService(t)
	const posts, clients, perClient = 5, 8, 40
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				method := "POST"
				if i%4 == 3 {
					method = "DELETE" // an unlike
				}
				res := do(t, method, fmt.Sprintf("%s/posts/p%d/like", srv.URL, (c+i)%posts), nil)
				res.Body.Close()
				if res.StatusCode != http.StatusNoContent {
					t.Errorf("%s like: %s", method, res.Status)
				}
			}
		}()
	}
	wg.Wait()
	// 40 requests a client, every 4th an unlike: 20 net likes per client, 4 a post.
	want := int64(clients * perClient / 2 / posts)
	for p := range posts {
		if n := likes(t, srv, fmt.Sprintf("p%d", p)); n != want {
			t.Fatalf("before the flush: p%d has %d likes, want %d", p, n, want)
		}
	}

	ctx := context.Background()
	for {
		n, err := s.Flusher().FlushOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 && s.Flusher().Stats().Pending == 0 {
			break
		}
	}
	for p := range posts {
		post := fmt.Sprintf("p%d", p)
		if n := likes(t, srv, post); n != want {
			t.Fatalf("after the flush: %s has %d likes, want %d", post, n, want)
		}
		var row int64
		if err := s.db.QueryRow("SELECT likes FROM "+s.table+" WHERE post = ?", post).Scan(&row); err != nil || row != want {
			t.Fatalf("row of %s: %d, %v; want %d", post, row, err, want)
		}
	}
	if n := likes(t, srv, "nobody-liked-this"); n != 0 {
		t.Fatalf("unliked post: %d", n)
	}
}

// A retried request with the same Idempotency-Key counts once.
func TestLikeRetryCountsOnce(t *testing.T) {
	_, srv := newService(t)
	for range 3 {
		res := do(t, "POST", srv.URL+"/posts/p1/like", map[string]string{"Idempotency-Key": "req-1"})
		res.Body.Close()
	}
	if n := likes(t, srv, "p1"); n != 1 {
		t.Fatalf("three tries of one request: %d likes, want 1", n)
	}
	res := do(t, "POST", srv.URL+"/posts/bad id/like", nil)
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest && res.StatusCode != http.StatusNotFound {
		t.Fatalf("bad id: %s", res.Status)
	}
}
