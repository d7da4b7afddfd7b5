package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/netshim/netshim/internal/fastio"
)

// The indexes below keep setup's cost independent of the number of
// containers: names/<name> holds the id of the container with that name,
// and creating/<id> marks a setup in progress, so a crashed one is found by
// listing a directory that is normally empty. Records remain the truth: an
// index entry without a matching record is stale and ignored.

func (s *Store) namePath(name string) string            { return filepath.Join(s.Dir, "names", name) }
func (s *Store) creatingPath(id string) string          { return filepath.Join(s.Dir, "creating", id) }
func (s *Store) ensureDir(sub string) error             { return os.MkdirAll(filepath.Join(s.Dir, sub), 0o700) }
func (s *Store) indexErr(op, p string, err error) error { return fmt.Errorf("%s %s: %w", op, p, err) }

// NameOwner returns the record of the container holding name, if any.
func (s *Store) NameOwner(name string) (*Record, bool, error) {
	data, err := fastio.ReadFile(s.namePath(name))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, s.indexErr("read", s.namePath(name), err)
	}
	id := strings.TrimSpace(string(data))
	if CheckID(id) != nil {
		return nil, false, nil // stale or damaged: the name is free
	}
	rec, ok, err := s.Get(id)
	if err != nil || !ok || rec.Name != name {
		return nil, false, err
	}
	return rec, true, nil
}

// SetName records that container id holds name.
func (s *Store) SetName(name, id string) error {
	if err := s.ensureDir("names"); err != nil {
		return err
	}
	return writeFile(s.namePath(name), []byte(id+"\n"))
}

// DropName forgets name if container id holds it.
func (s *Store) DropName(name, id string) error {
	p := s.namePath(name)
	data, err := fastio.ReadFile(p)
	if err != nil || strings.TrimSpace(string(data)) != id {
		return nil
	}
	if err := removeIfExists(p); err != nil {
		return s.indexErr("remove", p, err)
	}
	return nil
}

// MarkCreating notes that setup of id is in progress, in the process pid
// that started at start (setup finishes without the lock, so a marker
// alone does not mean its setup was killed).
func (s *Store) MarkCreating(id string, pid int, start uint64) error {
	if err := s.ensureDir("creating"); err != nil {
		return err
	}
	if err := fastio.WriteFile(s.creatingPath(id), []byte(fmt.Sprintf("%d %d\n", pid, start)), 0o600); err != nil {
		return s.indexErr("create", s.creatingPath(id), err)
	}
	return nil
}

// CreatingOwner returns the process doing the setup of id, as marked; ok
// is false without a marker or an owner in it.
func (s *Store) CreatingOwner(id string) (pid int, start uint64, ok bool) {
	data, err := fastio.ReadFile(s.creatingPath(id))
	if err != nil {
		return 0, 0, false
	}
	if _, err := fmt.Sscanf(string(data), "%d %d", &pid, &start); err != nil {
		return 0, 0, false
	}
	return pid, start, true
}

// UnmarkCreating drops the mark of id.
func (s *Store) UnmarkCreating(id string) error {
	if err := removeIfExists(s.creatingPath(id)); err != nil {
		return s.indexErr("remove", s.creatingPath(id), err)
	}
	return nil
}

// Creating lists the ids whose setup was started and not finished.
func (s *Store) Creating() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "creating"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	ids := make([]string, 0, len(ents))
	for _, e := range ents {
		ids = append(ids, e.Name())
	}
	return ids, nil
}

// Names lists the name index as name -> id (for gc).
func (s *Store) Names() (map[string]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.Dir, "names"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	out := map[string]string{}
	for _, e := range ents {
		data, _ := fastio.ReadFile(s.namePath(e.Name()))
		out[e.Name()] = strings.TrimSpace(string(data))
	}
	return out, nil
}

// RemoveTemps removes the temporary files of writes a killed hook left
// half done (see writeFile). The caller holds the lock, under which names,
// networks and port reservations are written: every temporary file there
// is a leftover. Records and creating markers are also written by setups
// finishing without the lock, so there only those of ids dead reports are
// removed. It reads whole directories: for crash recovery and gc only.
func (s *Store) RemoveTemps(dead func(id string) bool) error {
	var errs []error
	for _, sub := range []string{"names", "networks", "ports", "containers", "creating"} {
		dir := filepath.Join(s.Dir, sub)
		ents, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		for _, e := range ents {
			name := e.Name()
			if !strings.HasPrefix(name, ".") || e.IsDir() {
				continue
			}
			if sub == "containers" || sub == "creating" {
				// .<id>.json.<random> or .<id>.<random>
				base := strings.TrimPrefix(name, ".")
				if i := strings.LastIndexByte(base, '.'); i > 0 {
					base = base[:i]
				}
				if !dead(strings.TrimSuffix(base, ".json")) {
					continue
				}
			}
			if err := removeIfExists(filepath.Join(dir, name)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
