package cache

import "fmt"

// Versioned is implemented by values (T or *T) that carry the version of the
// database row they were read from: a version column, or an updated-at in
// microseconds. Fills and Sets never replace a stored value with a lower
// version. Versions must be 0 (unversioned) or positive and must never go
// backwards for a key, also across delete and re-insert.
type Versioned interface {
	CacheVersion() int64
}

// versionOf returns v's version: 0 unless T or *T implements Versioned.
func versionOf[T any](v T) (ver int64, err error) {
	defer func() {
		// A nil pointer whose CacheVersion dereferences it has no version.
		if recover() != nil {
			ver, err = 0, nil
		}
	}()
	if vv, ok := any(v).(Versioned); ok {
		ver = vv.CacheVersion()
	} else if vv, ok := any(&v).(Versioned); ok {
		ver = vv.CacheVersion()
	}
	if ver < 0 {
		return 0, fmt.Errorf("%w: %d", ErrNegativeVersion, ver)
	}
	return ver, nil
}
