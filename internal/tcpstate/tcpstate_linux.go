//go:build linux

package tcpstate

import (
	"net"

	"golang.org/x/sys/unix"
)

// tcpClose is TCP_CLOSE of include/net/tcp_states.h, as TCP_INFO reports it.
const tcpClose = 7

func wasReset(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	var state uint8
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); gerr == nil {
			state = info.State
		}
	}); err != nil || gerr != nil {
		return false
	}
	return state == tcpClose
}
