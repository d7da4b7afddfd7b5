package resolver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Forwarding, like glibc's resolver with a memory: the upstreams are asked
// in their order, the next one too when one has not answered within
// hedgeAfter, and the first answer wins. An upstream that was asked
// before the one that answered, and had not answered by then, goes to the
// back of the order for penaltyFor: a dead first upstream costs the first
// lookup one hedgeAfter, not every lookup one timeout. Every attempt ends
// by forwardFor, well inside glibc's 5 s, so a client never retries while
// we still wait; an upstream slower than hedgeAfter still answers if none
// is faster.
const (
	hedgeAfter = time.Second
	forwardFor = 4 * time.Second
	penaltyFor = 30 * time.Second
)

// Descriptor budget: each attempt holds one socket while it waits, each
// TCP client one connection. What is left of RLIMIT_NOFILE after the
// reserve is what attempts may use, at most maxAttempts (Docker's 1,024
// forwarded queries in flight); TCP clients are at most maxTCPConns. A
// query that finds no budget is answered SERVFAIL at once.
const (
	maxAttempts  = 1024
	maxTCPConns  = 128
	fdReserve    = maxTCPConns + 32
	maxPerTCPCon = 16 // queries of one TCP client in flight
)

// forwarder asks upstreams on behalf of clients.
type forwarder struct {
	attempts atomic.Int64 // sockets in flight
	mu       sync.Mutex
	penalty  map[string]time.Time // upstream -> asked last until then

	hedge, total time.Duration
	// budget is how many attempts may be in flight (see fdBudget).
	budget func() int
}

func newForwarder() *forwarder {
	return &forwarder{penalty: map[string]time.Time{}, hedge: hedgeAfter, total: forwardFor, budget: fdBudget}
}

// fdBudget is the attempts the descriptor limit leaves room for, read at
// each attempt: the limit may be lowered while the responder runs.
func fdBudget() int {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return maxAttempts
	}
	return int(max(0, min(int64(r.Cur)-fdReserve, maxAttempts)))
}

// acquire takes an attempt's slot, if the budget has one.
func (f *forwarder) acquire() bool {
	if f.attempts.Add(1) > int64(f.budget()) {
		f.attempts.Add(-1)
		return false
	}
	return true
}

func (f *forwarder) release() { f.attempts.Add(-1) }

// order is ups with the penalized ones last, each group in its order.
func (f *forwarder) order(ups []string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	var good, bad []string
	for _, u := range ups {
		if until, ok := f.penalty[u]; ok && now.Before(until) {
			bad = append(bad, u)
		} else {
			delete(f.penalty, u)
			good = append(good, u)
		}
	}
	return append(good, bad...)
}

func (f *forwarder) penalize(up string) {
	f.mu.Lock()
	f.penalty[up] = time.Now().Add(penaltyFor)
	f.mu.Unlock()
}

func (f *forwarder) pardon(up string) {
	f.mu.Lock()
	delete(f.penalty, up)
	f.mu.Unlock()
}

// errBusy says the budget had no room for the query.
var errBusy = errors.New("too many forwarded queries in flight")

// attemptResult is one upstream's outcome.
type attemptResult struct {
	i    int
	resp []byte
	err  error
}

// forward asks ups for query q over UDP or TCP and returns the first
// answer, which is at most limit bytes (more is reported as errTooLarge).
// The caller holds one slot (see acquire), for the first attempt.
func (f *forwarder) forward(q []byte, ups []string, tcp bool, limit int) ([]byte, error) {
	order := f.order(ups)
	deadline := time.Now().Add(f.total)
	results := make(chan attemptResult, len(order))
	asked, pending := 0, 0
	start := func(haveSlot bool) bool {
		if asked == len(order) || (!haveSlot && !f.acquire()) {
			if haveSlot {
				f.release()
			}
			return false
		}
		i := asked
		asked++
		pending++
		go func() {
			defer f.release()
			resp, err := exchange(q, order[i], tcp, deadline, limit)
			results <- attemptResult{i, resp, err}
		}()
		return true
	}
	start(true)
	hedge := time.NewTimer(f.hedge)
	defer hedge.Stop()
	end := time.NewTimer(time.Until(deadline))
	defer end.Stop()
	answered := make([]bool, len(order))
	var lastErr error
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			answered[r.i] = true
			if r.err == nil {
				for j := 0; j < r.i; j++ {
					if !answered[j] {
						f.penalize(order[j]) // asked first, beaten
					}
				}
				f.pardon(order[r.i])
				return r.resp, nil
			}
			if errors.Is(r.err, errTooLarge) {
				return nil, r.err // an answer: the client asks again over TCP
			}
			lastErr = r.err
			f.penalize(order[r.i])
			if start(false) {
				hedge.Reset(f.hedge)
			}
		case <-hedge.C:
			if start(false) {
				hedge.Reset(f.hedge)
			}
		case <-end.C:
			for j := 0; j < asked; j++ {
				if !answered[j] {
					f.penalize(order[j])
				}
			}
			return nil, fmt.Errorf("no upstream answered within %s", f.total)
		}
	}
	if lastErr == nil {
		lastErr = errBusy
	}
	return nil, lastErr
}

// errTooLarge says an upstream's answer is larger than the client takes.
var errTooLarge = errors.New("answer larger than the client takes")

// exchange sends q to server and waits until deadline for the answer with
// q's id. Over UDP the socket is connected, so only server's datagrams
// arrive, and a new one per attempt has a port of its own.
func exchange(q []byte, server string, tcp bool, deadline time.Time, limit int) ([]byte, error) {
	network := "udp"
	if tcp {
		network = "tcp"
	}
	c, err := net.DialTimeout(network, server, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if tcp {
		if _, err := c.Write(tcpMsg(q)); err != nil {
			return nil, err
		}
		for {
			resp, err := readTCPMsg(c)
			if err != nil {
				return nil, err
			}
			if isAnswerTo(resp, q) {
				return resp, nil
			}
		}
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	// One byte more than the client takes tells a datagram too large.
	buf := make([]byte, limit+1)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if !isAnswerTo(buf[:n], q) {
			continue // a late answer to an earlier query on a reused port
		}
		if n > limit {
			return nil, errTooLarge
		}
		return append([]byte(nil), buf[:n]...), nil
	}
}

// isAnswerTo reports whether resp is a response with q's id.
func isAnswerTo(resp, q []byte) bool {
	return len(resp) >= 12 && resp[0] == q[0] && resp[1] == q[1] && resp[2]&0x80 != 0
}

// tcpMsg is msg with the length prefix of DNS over TCP.
func tcpMsg(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(len(msg))), msg...)
}

// readTCPMsg reads one length-prefixed DNS message, into a buffer of its
// size.
func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}
