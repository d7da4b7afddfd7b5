// Package cluster keeps what the hosts of overlay networks must agree on
// in etcd: the networks' definitions, each host's subnet lease (its
// underlay address and VTEP MAC, as flannel's) and the containers' names.
// It talks to etcd through etcd's own v3 JSON API (the gRPC gateway every
// etcd since 3.4 serves), with the standard library's HTTP client: the
// etcd Go client's gRPC stack would be linked into every hook, overlay or
// not (see bench/HISTORY.md).
package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/netshim/netshim/config"
)

// Client talks to one etcd cluster.
type Client struct {
	endpoints []string
	http      *http.Client
	// Timeout bounds each request.
	Timeout time.Duration
	// Prefix is the key prefix of everything netshim stores.
	Prefix string
}

// UnreachableError says no etcd endpoint answered.
type UnreachableError struct {
	Endpoints []string
	Err       error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("etcd %v unreachable: %v", e.Endpoints, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// StatusError is an error etcd answered with.
type StatusError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (e *StatusError) Error() string { return "etcd: " + e.Message }

// grpcNotFound is gRPC's NOT_FOUND, which etcd answers for a lease it
// does not know (expired or revoked).
const grpcNotFound = 5

// New returns a client for the cluster c; it connects on first use.
func New(c config.Cluster) (*Client, error) {
	tr := &http.Transport{ForceAttemptHTTP2: false, MaxIdleConnsPerHost: 2}
	if c.CA != "" || c.Cert != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CA != "" {
			pem, err := os.ReadFile(c.CA)
			if err != nil {
				return nil, fmt.Errorf("read etcd_ca: %w", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd_ca %s: no PEM certificate", c.CA)
			}
		}
		if c.Cert != "" {
			cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
			if err != nil {
				return nil, fmt.Errorf("read etcd_cert and etcd_key: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		tr.TLSClientConfig = cfg
	}
	return &Client{endpoints: c.Endpoints, http: &http.Client{Transport: tr}, Timeout: c.Timeout, Prefix: c.Prefix}, nil
}

// Endpoints are the etcd endpoints the client tries, in order.
func (c *Client) Endpoints() []string { return c.endpoints }

// post sends one request to the first endpoint that answers and decodes
// its answer into out.
func (c *Client) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var last error
	for _, ep := range c.endpoints {
		resp, err := c.do(ctx, ep+path, body)
		if err != nil {
			last = err
			continue
		}
		defer resp.Body.Close()
		return decode(resp, out)
	}
	return &UnreachableError{Endpoints: c.endpoints, Err: last}
}

func (c *Client) do(ctx context.Context, url string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.http.Do(req)
}

func decode(resp *http.Response, out any) error {
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("etcd answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		se := &StatusError{}
		if json.Unmarshal(data, se) != nil || se.Message == "" {
			se.Message = resp.Status
		}
		return se
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("etcd answer: %w", err)
	}
	return nil
}

// num is an int64 as etcd's JSON API writes it: a string, absent when 0.
type num int64

func (n *num) UnmarshalJSON(b []byte) error {
	s := string(bytes.Trim(b, `"`))
	v, err := strconv.ParseInt(s, 10, 64)
	*n = num(v)
	return err
}

func (n num) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatInt(int64(n), 10) + `"`), nil
}

// KV is one key with its value and the lease it lives on (0: none).
type KV struct {
	Key   string
	Value []byte
	Lease int64
}

type kvJSON struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
	Lease num    `json:"lease"`
}

func (k kvJSON) kv() KV { return KV{Key: string(k.Key), Value: k.Value, Lease: int64(k.Lease)} }

type rangeReq struct {
	Key      []byte `json:"key"`
	RangeEnd []byte `json:"range_end,omitempty"`
}

type rangeResp struct {
	KVs []kvJSON `json:"kvs"`
}

// prefixEnd is the end of the range of keys that start with p.
func prefixEnd(p string) []byte {
	end := []byte(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

func rangeOf(key string, prefix bool) rangeReq {
	r := rangeReq{Key: []byte(key)}
	if prefix {
		r.RangeEnd = prefixEnd(key)
	}
	return r
}

// Get returns the key, or the keys under it with prefix.
func (c *Client) Get(ctx context.Context, key string, prefix bool) ([]KV, error) {
	var resp rangeResp
	if err := c.post(ctx, "/v3/kv/range", rangeOf(key, prefix), &resp); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	out := make([]KV, len(resp.KVs))
	for i, k := range resp.KVs {
		out[i] = k.kv()
	}
	return out, nil
}

// Op is one operation of a transaction (a put or a delete), or one of its
// conditions.
type Op struct {
	put   *putReq
	del   *rangeReq
	check *compare
}

type putReq struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
	Lease num    `json:"lease,omitempty"`
}

// Put is an Op that sets key to value, on lease (0: none).
func Put(key string, value []byte, lease int64) Op {
	return Op{put: &putReq{Key: []byte(key), Value: value, Lease: num(lease)}}
}

// Delete is an Op that removes key, or every key under it with prefix.
func Delete(key string, prefix bool) Op {
	r := rangeOf(key, prefix)
	return Op{del: &r}
}

type compare struct {
	Target         string `json:"target"`
	Key            []byte `json:"key"`
	Result         string `json:"result"`
	CreateRevision num    `json:"create_revision"`
}

// Absent is a condition: key does not exist.
func Absent(key string) Op {
	return Op{check: &compare{Target: "CREATE", Key: []byte(key), Result: "EQUAL"}}
}

type txnReq struct {
	Compare []compare        `json:"compare,omitempty"`
	Success []map[string]any `json:"success,omitempty"`
}

type txnResp struct {
	Succeeded bool `json:"succeeded"`
}

func ops(in []Op) []map[string]any {
	var out []map[string]any
	for _, o := range in {
		switch {
		case o.put != nil:
			out = append(out, map[string]any{"request_put": o.put})
		case o.del != nil:
			out = append(out, map[string]any{"request_delete_range": o.del})
		}
	}
	return out
}

// Txn runs then, in one transaction, if every condition of when holds,
// and reports whether it ran.
func (c *Client) Txn(ctx context.Context, when, then []Op) (bool, error) {
	req := txnReq{Success: ops(then)}
	for _, o := range when {
		req.Compare = append(req.Compare, *o.check)
	}
	var resp txnResp
	if err := c.post(ctx, "/v3/kv/txn", req, &resp); err != nil {
		return false, fmt.Errorf("transaction: %w", err)
	}
	return resp.Succeeded, nil
}

// Grant makes a lease of ttl.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (int64, error) {
	var resp struct {
		ID  num `json:"ID"`
		TTL num `json:"TTL"`
	}
	if err := c.post(ctx, "/v3/lease/grant", map[string]any{"TTL": int64(ttl / time.Second)}, &resp); err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	return int64(resp.ID), nil
}

// ErrLeaseGone says a lease expired or was revoked.
var ErrLeaseGone = errors.New("lease expired or revoked")

// KeepAlive renews lease id once and returns its new time to live.
func (c *Client) KeepAlive(ctx context.Context, id int64) (time.Duration, error) {
	var resp struct {
		Result struct {
			TTL num `json:"TTL"`
		} `json:"result"`
		Error *StatusError `json:"error"`
	}
	if err := c.post(ctx, "/v3/lease/keepalive", map[string]any{"ID": num(id)}, &resp); err != nil {
		return 0, fmt.Errorf("renew lease %x: %w", id, err)
	}
	if resp.Error != nil {
		return 0, fmt.Errorf("renew lease %x: %w", id, resp.Error)
	}
	if resp.Result.TTL <= 0 {
		return 0, fmt.Errorf("renew lease %x: %w", id, ErrLeaseGone)
	}
	return time.Duration(resp.Result.TTL) * time.Second, nil
}

// Revoke ends lease id and deletes its keys.
func (c *Client) Revoke(ctx context.Context, id int64) error {
	var resp struct{}
	err := c.post(ctx, "/v3/lease/revoke", map[string]any{"ID": num(id)}, &resp)
	var se *StatusError
	if errors.As(err, &se) && se.Code == grpcNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("revoke lease %x: %w", id, err)
	}
	return nil
}

// TimeToLive returns what remains of lease id (ErrLeaseGone when none).
func (c *Client) TimeToLive(ctx context.Context, id int64) (time.Duration, error) {
	var resp struct {
		TTL num `json:"TTL"`
	}
	if err := c.post(ctx, "/v3/lease/timetolive", map[string]any{"ID": num(id)}, &resp); err != nil {
		return 0, fmt.Errorf("lease %x: %w", id, err)
	}
	if resp.TTL <= 0 {
		return 0, fmt.Errorf("lease %x: %w", id, ErrLeaseGone)
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// Watch calls fn once the watch is in place and then whenever a key under
// prefix changes, until ctx ends or the stream breaks.
func (c *Client) Watch(ctx context.Context, prefix string, fn func()) error {
	r := rangeOf(prefix, true)
	body, err := json.Marshal(map[string]any{"create_request": map[string]any{"key": r.Key, "range_end": r.RangeEnd}})
	if err != nil {
		return err
	}
	var last error
	for _, ep := range c.endpoints {
		resp, err := c.do(ctx, ep+"/v3/watch", body)
		if err != nil {
			last = err
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return decode(resp, nil)
		}
		dec := json.NewDecoder(resp.Body)
		for {
			var msg struct {
				Result struct {
					Created  bool  `json:"created"`
					Canceled bool  `json:"canceled"`
					Events   []any `json:"events"`
				} `json:"result"`
				Error *StatusError `json:"error"`
			}
			if err := dec.Decode(&msg); err != nil {
				return fmt.Errorf("watch %s: %w", prefix, err)
			}
			if msg.Error != nil {
				return fmt.Errorf("watch %s: %w", prefix, msg.Error)
			}
			if msg.Result.Canceled {
				return fmt.Errorf("watch %s: canceled by etcd", prefix)
			}
			if msg.Result.Created || len(msg.Result.Events) > 0 {
				fn()
			}
		}
	}
	return &UnreachableError{Endpoints: c.endpoints, Err: last}
}
