package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/netshim/netshim/config"
)

// NetworkDef is a network made with `netshim network create`, kept in the
// data dir so it survives a reboot.
type NetworkDef struct {
	Name    string             `json:"name"`
	ID      string             `json:"id"`
	Created time.Time          `json:"created"`
	Spec    config.NetworkFile `json:"spec"`
}

// Network canonicalizes the definition.
func (d *NetworkDef) Network() (config.Network, error) {
	return config.NetworkFromFile(d.Name, d.ID, &d.Spec)
}

// Defs is the directory of created networks.
type Defs struct {
	Dir string
}

// NewDefs returns the definitions under dataDir/networks. The directory is
// made on first write.
func NewDefs(dataDir string) *Defs {
	return &Defs{Dir: filepath.Join(dataDir, "networks")}
}

func (d *Defs) path(name string) string { return filepath.Join(d.Dir, name+".json") }

// Get returns the definition of name, or nil.
func (d *Defs) Get(name string) (*NetworkDef, error) {
	def := &NetworkDef{}
	if err := readJSON(d.path(name), def); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return def, nil
}

// Put writes a definition atomically.
func (d *Defs) Put(def *NetworkDef) error {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", d.Dir, err)
	}
	return writeJSON(d.path(def.Name), def)
}

// Delete removes a definition.
func (d *Defs) Delete(name string) error {
	if err := removeIfExists(d.path(name)); err != nil {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	return nil
}

// List returns every definition, by name.
func (d *Defs) List() ([]*NetworkDef, error) {
	ents, err := os.ReadDir(d.Dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list %s: %w", d.Dir, err)
	}
	var out []*NetworkDef
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		def, err := d.Get(name)
		if err != nil {
			return nil, err
		}
		if def != nil {
			out = append(out, def)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
