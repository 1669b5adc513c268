package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times on Linux.
const clockTick = 100

// cpuSeconds returns user+system CPU time of the processes and all their
// descendants (nginx's workers, say), read from /proc.
func cpuSeconds(roots []int) float64 {
	parent := map[int]int{}
	times := map[int]float64{}
	entries, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		s := string(b)
		// Fields after the command name, which may contain spaces.
		rest := s[strings.LastIndexByte(s, ')')+2:]
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(s)[0])
		ppid, _ := strconv.Atoi(f[1])
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		parent[pid] = ppid
		times[pid] = (utime + stime) / clockTick
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	var total float64
	for pid, t := range times {
		for p := pid; p > 1; p = parent[p] {
			if in[p] {
				total += t
				break
			}
		}
	}
	return total
}

// measureCPU runs f and returns the CPU seconds the processes spent during
// it.
func measureCPU(pids []int, f func()) (float64, time.Duration) {
	before := cpuSeconds(pids)
	start := time.Now()
	f()
	return cpuSeconds(pids) - before, time.Since(start)
}
