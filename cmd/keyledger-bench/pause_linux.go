package main

import (
	"syscall"
	"time"
)

// pause sleeps for about d (plus the kernel's timer slack, some 50 µs) in a
// nanosleep system call. time.Sleep would not do: with nothing else to run,
// the Go scheduler waits for a timer in epoll with millisecond resolution,
// so time.Sleep(20 * time.Microsecond) takes about a millisecond, which would
// be the resolution of the propagation figure.
func pause(d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	_ = syscall.Nanosleep(&ts, nil)
}
