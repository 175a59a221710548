// Package local is the in-process tier in front of Redis: a byte-bounded
// Store of values by Redis key, fed by one ordered invalidation Stream per
// Redis master, with barriers that prove how much of that stream has been
// applied.
//
// The read rule, for the Group g of the deployment's masters (one Stream
// each; a single server is a Group of one):
//
//   - strict: answer from the Store only after g.Wait returned nil (on
//     every master, a barrier sent after the read began has returned);
//   - bounded by Δ: answer from the Store while g.Fresh(Δ) (on every
//     master, the last barrier that returned was sent less than Δ ago);
//   - otherwise read Redis, taking g.Begin() before the read is sent and
//     handing that Ticket to Store.Fill with the value read.
//
// DESIGN.md, "The in-process tier", gives the argument and the costs.
package local
