package fastio

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReadWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if _, err := ReadFile(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
	big := bytes.Repeat([]byte("0123456789"), 1000) // more than one read buffer
	if err := WriteFile(p, big, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFile(p); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if err := WriteFile(p, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "short" {
		t.Fatalf("not truncated: %q", got)
	}
	if err := Create(p, unix.O_EXCL, nil, 0o600, true); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("O_EXCL on an existing file: %v", err)
	}
	os.Symlink(p, filepath.Join(dir, "link"))
	if err := WriteFile(filepath.Join(dir, "link"), []byte("x"), 0o600); err == nil {
		t.Fatal("wrote through a symlink")
	}
	if got, err := ReadFile("/proc/self/stat"); err != nil || len(got) == 0 {
		t.Fatalf("/proc/self/stat: %q %v", got, err)
	}
}
