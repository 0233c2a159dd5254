package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// loadTransport is the load generator's http.RoundTripper: HTTP/1.1 over
// kept-alive connections to a loopback server, where the goroutine that
// sends a request writes it and reads its response itself (net/http's own
// request writer and response parser).
//
// The load generator shares two cores with the service and Postgres, so
// what it spends is taken from what it measures. net/http's Transport hands
// each request to a connection's write goroutine and its response back from
// the connection's read goroutine, and the body's end back again: under
// the verify load its client side took 8.2 s of CPU against 5.6 s for the
// server it loaded (readLoop and writeLoop 4.1 s of it), so the figures
// measured the client as much as the service.
type loadTransport struct {
	maxIdle  int
	timeout  time.Duration // for a request whose context has no deadline, and a dial
	idleTime time.Duration // how long a connection may stay idle and be used again

	mu   sync.Mutex
	idle map[string][]*loadConn // by host:port, most recently used last
}

// newLoadTransport returns a transport keeping up to maxIdle idle
// connections per host.
func newLoadTransport(maxIdle int, timeout time.Duration) *loadTransport {
	return &loadTransport{maxIdle: maxIdle, timeout: timeout, idleTime: maxIdleTime, idle: map[string][]*loadConn{}}
}

type loadConn struct {
	host string
	net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	idleSince time.Time
}

// maxIdleTime is how long a connection may stay idle and still be used: less
// than the service's IdleTimeout (2 min), after which its server closes it.
const maxIdleTime = time.Minute

// past is a deadline already gone: it makes a blocked read or write
// return at once.
var past = time.Unix(1, 0)

func (t *loadTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		closeBody(req)
		return nil, fmt.Errorf("bench transport: only http://, not %q", req.URL.Scheme)
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		closeBody(req)
		return nil, err
	}
	c, err := t.conn(ctx, req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	deadline, fromCtx := ctx.Deadline()
	if !fromCtx {
		deadline = time.Now().Add(t.timeout)
	}
	if err := c.SetDeadline(deadline); err != nil {
		closeBody(req)
		c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(past) })
	fail := func(err error) (*http.Response, error) {
		stop()
		c.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if fromCtx && errors.Is(err, os.ErrDeadlineExceeded) { // the context's deadline, as the connection's
			return nil, context.DeadlineExceeded
		}
		return nil, err
	}
	if err := req.Write(c.w); err != nil { // closes the request's body
		return fail(err)
	}
	if err := c.w.Flush(); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(c.r, req)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(c.r, req) // an informational response: the answer follows
	}
	if err != nil {
		return fail(err)
	}
	resp.Body = &loadBody{ReadCloser: resp.Body, t: t, c: c, stop: stop, reuse: !resp.Close && !req.Close}
	return resp, nil
}

// conn returns an idle connection to host, or a new one. It closes the
// idle connections that its server may have closed already.
func (t *loadTransport) conn(ctx context.Context, host string) (*loadConn, error) {
	var stale []*loadConn
	defer func() {
		for _, c := range stale {
			c.Close()
		}
	}()
	t.mu.Lock()
	for cs := t.idle[host]; len(cs) > 0; cs = t.idle[host] {
		c := cs[len(cs)-1]
		t.idle[host] = cs[:len(cs)-1]
		if time.Since(c.idleSince) < t.idleTime {
			t.mu.Unlock()
			return c, nil
		}
		stale = append(stale, c)
	}
	t.mu.Unlock()
	nc, err := (&net.Dialer{Timeout: t.timeout, KeepAlive: 30 * time.Second}).DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	return &loadConn{host: host, Conn: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}, nil
}

// put keeps c for the next request to its host, or closes it if enough are
// kept already.
func (t *loadTransport) put(c *loadConn) {
	c.idleSince = time.Now()
	t.mu.Lock()
	if cs := t.idle[c.host]; len(cs) < t.maxIdle {
		t.idle[c.host] = append(cs, c)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	c.Close()
}

// CloseIdleConnections closes the idle connections (http.Client calls it).
func (t *loadTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*loadConn{}
	t.mu.Unlock()
	for _, cs := range idle {
		for _, c := range cs {
			c.Close()
		}
	}
}

// loadBody is a response's body; closing it after reading it to the end
// gives the connection back for the next request, and otherwise closes it.
type loadBody struct {
	io.ReadCloser
	t     *loadTransport
	c     *loadConn
	stop  func() bool
	reuse bool // the server keeps the connection open
	eof   bool
	done  bool
}

func (b *loadBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *loadBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	if !b.eof { // net/http's Close would read the rest first
		b.stop()
		b.c.Close()
		b.ReadCloser.Close() // fails at once: the connection is closed
		return nil
	}
	err := b.ReadCloser.Close()
	// Reused only if nothing is left unread after this response.
	if b.stop() && b.reuse && err == nil && b.c.r.Buffered() == 0 {
		b.t.put(b.c)
		return nil
	}
	b.c.Close()
	return err
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
