//go:build !race

package writebehind_test

const raceEnabled = false
