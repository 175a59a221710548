package writebehind

// SetAfterCommit installs the hook called between a batch's commit and its
// acknowledgement. Call it before any flusher runs.
func SetAfterCommit(fn func()) { afterCommit = fn }
