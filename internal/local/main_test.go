package local

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every test's Store and Stream stopped their
// goroutines (otter's included) when closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
