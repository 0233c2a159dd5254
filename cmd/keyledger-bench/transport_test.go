package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The load generator's transport sends each request and reads its response
// on one kept-alive connection, gives the connection back only once the body
// was read to its end and the server keeps it open, and gives up on a
// request when its context ends.
func TestLoadTransportKeepsConnectionsOnlyWhenTheyCanBeReused(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		w.Header().Set("X-Method", r.Method)
		io.WriteString(w, "echo:"+string(body))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(func() { close(release); srv.Close() })
	client := newHTTPClient(4)

	do := func(ctx context.Context, method, path, body string, read bool) (string, error) {
		req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, method, resp.Header.Get("X-Method"))
		if !read {
			return "", nil
		}
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	ctx := context.Background()

	for i := range 5 { // one connection, reused
		got, err := do(ctx, http.MethodPost, "/", strings.Repeat("x", i), true)
		require.NoError(t, err)
		require.Equal(t, "echo:"+strings.Repeat("x", i), got)
	}
	require.EqualValues(t, 1, conns.Load())

	_, err := do(ctx, http.MethodGet, "/close", "", true) // the server closes it: not kept
	require.NoError(t, err)
	_, err = do(ctx, http.MethodGet, "/", "", true)
	require.NoError(t, err)
	require.EqualValues(t, 2, conns.Load())

	_, err = do(ctx, http.MethodGet, "/", "", false) // body not read: not kept
	require.NoError(t, err)
	_, err = do(ctx, http.MethodGet, "/", "", true)
	require.NoError(t, err)
	require.EqualValues(t, 3, conns.Load())

	got, err := do(ctx, http.MethodGet, "/hints", "", true) // an informational response first: the answer is the final one
	require.NoError(t, err)
	require.Equal(t, "echo:", got)
	got, err = do(ctx, http.MethodPost, "/", "next", true) // and the connection is in step
	require.NoError(t, err)
	require.Equal(t, "echo:next", got)
	require.EqualValues(t, 3, conns.Load())

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond) // a stalled response
	defer cancel()
	start := time.Now()
	_, err = do(short, http.MethodGet, "/slow", "", true)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)
	got, err = do(ctx, http.MethodGet, "/", "after", true) // the stalled connection was not kept
	require.NoError(t, err)
	require.Equal(t, "echo:after", got)
	require.EqualValues(t, 4, conns.Load()) // the slow request took the third; the fourth is new
}

// A connection idle for longer than the transport uses one is closed, not
// used: its server may have closed it meanwhile.
func TestLoadTransportDropsConnectionsIdleTooLong(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	tr := newLoadTransport(4, 30*time.Second)
	tr.idleTime = 50 * time.Millisecond
	client := &http.Client{Transport: tr}
	get := func() {
		resp, err := client.Get(srv.URL)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, "ok", string(b))
	}
	get()
	get()
	require.EqualValues(t, 1, conns.Load())
	time.Sleep(200 * time.Millisecond) // the server has closed it
	get()
	require.EqualValues(t, 2, conns.Load())
}
