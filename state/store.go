// Package state keeps netshim's host state: one lock per host, a record per
// container of exactly what setup created, and per-network address
// allocations. Files are written atomically (temp, fsync, rename) so a hook
// killed at any point leaves either the old or the new version.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netshim/netshim/internal/fastio"
)

// Store is the state directory.
type Store struct {
	Dir string
}

// Format is the state directory's layout version, in its file "format".
// State from a netshim without it is not read: a state dir lives on tmpfs
// (/run/netshim), so a reboot or the removal of the dir after its
// containers are stopped is all a change of format needs.
const Format = "netshim-state 2"

// OldStateError refuses a state dir written by another format.
type OldStateError struct {
	Dir, Found string
}

func (e *OldStateError) Error() string {
	return fmt.Sprintf("state dir %s was written by an older netshim (%s): stop the containers it lists, then remove %s (or reboot: it is on tmpfs by default)", e.Dir, e.Found, e.Dir)
}

// UnsafeDirError refuses a state dir that someone but its root could
// change: its records drive what a hook deletes.
type UnsafeDirError struct {
	Dir, Reason string
}

func (e *UnsafeDirError) Error() string {
	return fmt.Sprintf("state dir %s %s: refusing to use it", e.Dir, e.Reason)
}

// New returns the store rooted at dir, creating its layout. dir must be
// owned by this process's user and writable by no one else; a dir that
// has content but not this format's is refused.
func New(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, fmt.Errorf("stat state dir %s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return nil, &UnsafeDirError{Dir: dir, Reason: "is not a directory (a symlink?)"}
	case int(st.Uid) != os.Geteuid():
		return nil, &UnsafeDirError{Dir: dir, Reason: fmt.Sprintf("is owned by uid %d", st.Uid)}
	case st.Mode&0o022 != 0:
		return nil, &UnsafeDirError{Dir: dir, Reason: fmt.Sprintf("is writable by others (mode %o)", st.Mode&0o777)}
	}
	s := &Store{Dir: dir}
	if err := s.checkFormat(); err != nil {
		return nil, err
	}
	for _, d := range []string{filepath.Join(dir, "containers"), filepath.Join(dir, "networks")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create state dir %s: %w", d, err)
		}
	}
	return s, nil
}

// checkFormat reads the dir's format file, writing it into a dir that has
// nothing else.
func (s *Store) checkFormat() error {
	path := filepath.Join(s.Dir, "format")
	data, err := fastio.ReadFile(path)
	if err == nil {
		if got := strings.TrimSpace(string(data)); got != Format {
			return &OldStateError{Dir: s.Dir, Found: "format " + strconv.Quote(got)}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	// What netshim writes besides the lock and its log: any of it without
	// a format file is an older netshim's state.
	for _, name := range []string{"containers", "networks", "ports", "ports.json", "names", "creating"} {
		if _, err := os.Lstat(filepath.Join(s.Dir, name)); err == nil {
			return &OldStateError{Dir: s.Dir, Found: "it has " + name + " and no format file"}
		}
	}
	return writeFile(path, []byte(Format+"\n"))
}

// ErrLockTimeout is returned when the host lock could not be taken in time.
var ErrLockTimeout = errors.New("timed out")

// Lock is the held host lock.
type Lock struct{ fd int }

// Lock takes the host-wide lock, waiting at most timeout. A waiter sleeps
// in the kernel and is woken the moment the holder releases the lock (no
// polling interval is added to a wait).
func (s *Store) Lock(timeout time.Duration) (*Lock, error) {
	path := filepath.Join(s.Dir, "lock")
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state lock %s: %w", path, err)
	}
	err = flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return &Lock{fd: fd}, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		unix.Close(fd)
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	got := make(chan error, 1)
	go func() { got <- flock(fd, unix.LOCK_EX) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-got:
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		return &Lock{fd: fd}, nil
	case <-timer.C:
		// The blocked flock cannot be interrupted: if it ever succeeds,
		// release the lock at once.
		go func() { <-got; unix.Close(fd) }()
		return nil, fmt.Errorf("lock %s: %w after %s (another netshim holds it)", path, ErrLockTimeout, timeout)
	}
}

// flock is flock(2), restarted when a signal interrupts it.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l != nil && l.fd >= 0 {
		unix.Close(l.fd) // closing the descriptor drops the flock
		l.fd = -1
	}
}

// CorruptError names a state file that cannot be decoded.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("state file %s is corrupt (%v); move it aside and run `netshim gc` to rebuild from the other records", e.Path, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// readJSON decodes path into v. It returns fs.ErrNotExist (wrapped) when the
// file is absent and a *CorruptError when it cannot be decoded.
func readJSON(path string, v any) error {
	data, err := fastio.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return &CorruptError{Path: path, Err: err}
	}
	return nil
}

// writeJSON writes v to path atomically.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFile(path, append(data, '\n'))
}

// writeFile writes path atomically: a temporary file in the same directory
// (.<name>.<random>, see RemoveTemps), fsync, rename.
func writeFile(path string, data []byte) error {
	dir, base := filepath.Split(path)
	for try := 0; ; try++ {
		tmp := dir + "." + base + "." + strconv.FormatUint(uint64(rand.Uint32()), 10)
		err := fastio.Create(tmp, unix.O_EXCL, data, 0o600, true)
		if errors.Is(err, fs.ErrExist) && try < 100 {
			continue
		}
		if err == nil {
			err = unix.Rename(tmp, path)
		}
		if err != nil {
			unix.Unlink(tmp)
			return fmt.Errorf("write %s: %w", path, err)
		}
		return nil
	}
}

// MaxIDLen is the longest container id a record's temporary file name
// holds (".<id>.json.<10 digits>" in 255 bytes).
const MaxIDLen = 238

// CheckID validates an OCI container id as runc does (letters, digits and
// "_+,-."; not "." or ".."), for use as a file name: at most MaxIDLen
// bytes, and not starting with "." (the state's temporary files do).
func CheckID(id string) error {
	switch {
	case id == "":
		return errors.New("empty")
	case len(id) > MaxIDLen:
		return fmt.Errorf("longer than %d characters (a file name of the state holds it)", MaxIDLen)
	case id[0] == '.':
		return errors.New("starts with '.' (the state's temporary files do)")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_+,-.", c) >= 0) {
			return fmt.Errorf("has %q: use letters, digits and _+,-. as runc does", c)
		}
	}
	return nil
}

func (s *Store) recordPath(id string) string {
	return filepath.Join(s.Dir, "containers", id+".json")
}

// Get returns the record of container id; ok is false when there is none.
func (s *Store) Get(id string) (rec *Record, ok bool, err error) {
	if err := CheckID(id); err != nil {
		return nil, false, err
	}
	rec = &Record{}
	if err := readJSON(s.recordPath(id), rec); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return rec, true, nil
}

// Progress reads only how the setup of id is going: the hook doing it and
// whether a teardown cancelled it. ok is false without a record.
func (s *Store) Progress(id string) (owner *Process, cancelled, ok bool, err error) {
	if err := CheckID(id); err != nil {
		return nil, false, false, err
	}
	var p struct {
		Owner     *Process `json:"owner"`
		Cancelled bool     `json:"cancelled"`
	}
	if err := readJSON(s.recordPath(id), &p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, false, nil
		}
		return nil, false, false, err
	}
	return p.Owner, p.Cancelled, true, nil
}

// Put writes the record atomically.
func (s *Store) Put(rec *Record) error {
	if err := CheckID(rec.ID); err != nil {
		return err
	}
	return writeJSON(s.recordPath(rec.ID), rec)
}

// Delete removes the record; a missing record is not an error.
func (s *Store) Delete(id string) error {
	if err := removeIfExists(s.recordPath(id)); err != nil {
		return fmt.Errorf("remove record of %s: %w", id, err)
	}
	return nil
}

// List returns every record, sorted by creation time. Corrupt records are
// reported in errs and skipped, so one bad file does not hide the others.
func (s *Store) List() (recs []*Record, errs []error) {
	dir := filepath.Join(s.Dir, "containers")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, []error{fmt.Errorf("list %s: %w", dir, err)}
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
			continue
		}
		rec := &Record{}
		if err := readJSON(filepath.Join(dir, name), rec); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		recs = append(recs, rec)
	}
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].Created.Equal(recs[j].Created) {
			return recs[i].Created.Before(recs[j].Created)
		}
		return recs[i].ID < recs[j].ID
	})
	return recs, errs
}

// Find resolves a container by id, unique id prefix, or name.
func (s *Store) Find(ref string) (*Record, error) {
	recs, errs := s.List()
	var byPrefix []*Record
	for _, r := range recs {
		if r.ID == ref || r.Name == ref {
			return r, nil
		}
		if strings.HasPrefix(r.ID, ref) {
			byPrefix = append(byPrefix, r)
		}
	}
	if len(byPrefix) == 1 {
		return byPrefix[0], nil
	}
	if len(byPrefix) > 1 {
		return nil, fmt.Errorf("container %q is ambiguous: %d ids start with it", ref, len(byPrefix))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("no such container: %s (and %w)", ref, errs[0])
	}
	return nil, fmt.Errorf("no such container: %s", ref)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
