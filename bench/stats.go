package main

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Lat collects latencies from many goroutines.
type Lat struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *Lat) Add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// Merge adds a goroutine-local slice.
func (l *Lat) Merge(ds []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, ds...)
	l.mu.Unlock()
}

// P returns the q-quantile (0..1).
func (l *Lat) P(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	i := int(q * float64(len(l.d)-1))
	return l.d[i]
}

func (l *Lat) N() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

func us(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond))
}
