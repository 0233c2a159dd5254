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

// processCPU returns the CPU time this process (the service, its embedded
// NATS server if any, the load generator and the baseline's client) has
// used so far, user and system.
func processCPU() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}
