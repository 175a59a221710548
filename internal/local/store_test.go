package local

import (
	"strings"
	"testing"
	"time"
)

// TestStoreBoundedByBytes: whatever is filled, the bytes held stay within
// MaxBytes once otter has applied its evictions.
func TestStoreBoundedByBytes(t *testing.T) {
	const max = 64 << 10
	st := NewStore[string](StoreOptions{MaxBytes: max})
	defer st.Close()
	v := strings.Repeat("x", 1000)
	for i := range 1000 {
		st.Fill(Ticket{ok: true}, "local:"+itoa(i), v, len(v), time.Hour)
	}
	st.cache.CleanUp()
	if got := st.Stats().Bytes; got > max {
		t.Fatalf("%d bytes held, bound %d", got, max)
	}
	if st.Stats().Entries == 0 {
		t.Fatal("nothing held")
	}
}

// TestStoreExpiry: an entry is not answered after its TTL.
func TestStoreExpiry(t *testing.T) {
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	st.Fill(Ticket{ok: true}, "local:short", "v", 1, time.Nanosecond)
	st.Fill(Ticket{ok: true}, "local:long", "v", 1, time.Hour)
	waitFor(t, func() bool { _, ok := st.Get("local:short"); return !ok })
	if _, ok := st.Get("local:long"); !ok {
		t.Fatal("an entry within its TTL is gone")
	}
	if st.Fill(Ticket{ok: true}, "local:zero", "v", 1, 0) {
		t.Fatal("a zero TTL was stored")
	}
}

// TestStoreInvalidateAndFlush: Invalidate drops one key, Flush all of
// them and every earlier Ticket.
func TestStoreInvalidateAndFlush(t *testing.T) {
	st := NewStore[string](StoreOptions{})
	defer st.Close()
	tk := st.Ticket()
	st.Fill(tk, "local:a", "a", 1, time.Hour)
	st.Fill(tk, "local:b", "b", 1, time.Hour)
	st.Invalidate("local:a")
	if _, ok := st.Get("local:a"); ok {
		t.Fatal("invalidated key held")
	}
	if _, ok := st.Get("local:b"); !ok {
		t.Fatal("other key dropped")
	}
	st.Flush()
	if _, ok := st.Get("local:b"); ok {
		t.Fatal("key held after a flush")
	}
	if st.Fill(tk, "local:c", "c", 1, time.Hour) {
		t.Fatal("a Ticket from before the flush was honored")
	}
	if !st.Fill(st.Ticket(), "local:c", "c", 1, time.Hour) {
		t.Fatal("a fresh Ticket was refused")
	}
}

// TestStoreClosed: after Close a Store refuses fills and stays empty.
func TestStoreClosed(t *testing.T) {
	st := NewStore[string](StoreOptions{})
	st.Close()
	if st.Fill(st.Ticket(), "local:k", "v", 1, time.Hour) {
		t.Fatal("fill after Close stored")
	}
	st.Invalidate("local:k")
	st.Close()
	if _, ok := st.Get("local:k"); ok {
		t.Fatal("entry after Close")
	}
}
