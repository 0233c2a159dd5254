//go:build !linux

package main

import "time"

// pause sleeps for about d; see sys_linux.go.
func pause(d time.Duration) { time.Sleep(d) }

// processCPU is 0 where it is not measured (see sys_linux.go), which turns
// the figure off.
func processCPU() time.Duration { return 0 }
