// Package local is the in-process tier in front of Redis: a byte-bounded
// Store of values by Redis key, fed by one ordered invalidation Stream per
// Redis master, with barriers that prove how much of that stream has been
// applied.
//
// The read rule, for a key whose master's stream is s:
//
//   - strict: answer from the Store only after s.Wait returned nil (a
//     barrier sent after the read began has returned);
//   - bounded by Δ: answer from the Store while s.Fresh(Δ) (the last
//     barrier that returned was sent less than Δ ago);
//   - otherwise read Redis, taking s.Begin() before the read is sent and
//     handing that Ticket to Store.Fill with the value read.
//
// DESIGN.md, "The in-process tier", gives the argument and the costs.
package local
