// Package fastio reads and writes small files with plain system calls.
//
// A hook reads and writes a dozen small files (its state, /proc entries,
// the bundle's config.json) in a process that lives a few milliseconds.
// os.File tries each file with the runtime's poller (nonblocking mode, an
// epoll registration the kernel refuses for a regular file, blocking mode
// again): several system calls more per open than reading needs.
package fastio

import (
	"io/fs"

	"golang.org/x/sys/unix"
)

// ReadFile is os.ReadFile for small regular files and /proc entries.
// Errors are *fs.PathError, so errors.Is(err, fs.ErrNotExist) holds for a
// missing file.
func ReadFile(path string) ([]byte, error) {
	fd, err := openRetry(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 4096)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// WriteFile creates or truncates path and writes data, without fsync, as
// os.WriteFile does.
func WriteFile(path string, data []byte, perm uint32) error {
	return Create(path, unix.O_TRUNC, data, perm, false)
}

// Create writes data to the file path, opened with O_CREAT, O_NOFOLLOW and
// the extra flags (O_EXCL, O_TRUNC), then synced if sync, and closed.
func Create(path string, flags int, data []byte, perm uint32, sync bool) error {
	fd, err := openRetry(path, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW|flags, perm)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return &fs.PathError{Op: "write", Path: path, Err: err}
		}
		data = data[n:]
	}
	if sync {
		if err := unix.Fsync(fd); err != nil {
			unix.Close(fd)
			return &fs.PathError{Op: "sync", Path: path, Err: err}
		}
	}
	if err := unix.Close(fd); err != nil {
		return &fs.PathError{Op: "close", Path: path, Err: err}
	}
	return nil
}

func openRetry(path string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Open(path, flags, perm)
		if err != unix.EINTR {
			return fd, err
		}
	}
}
