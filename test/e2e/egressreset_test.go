package e2e

import (
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestEgressTargetResetFailsABlockedCaller: a TCP egress target that
// resets its connection while the gateway waits to hand its answer to a
// caller that does not read (the stream's flow-control window is full)
// fails the caller's connection. The gateway's write waiting for the
// window must wake and the stream be reset; otherwise the tunnel hangs,
// and the caller's uploads are taken and dropped as if delivered.
func TestEgressTargetResetFailsABlockedCaller(t *testing.T) {
	testenv.RequireNetns(t)

	// The target reads a little, answers more than every window holds,
	// and resets its connection while its answer is still held up.
	target := testenv.ListenNetns(t, 15)
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.ReadFull(c, make([]byte, 1<<20))
				go func() { _, _ = c.Write(make([]byte, 64<<20)) }()
				time.Sleep(time.Second)
				_ = c.(*net.TCPConn).SetLinger(0)
				_ = c.Close()
			}()
		}
	}()
	host, port, _ := net.SplitHostPort(target.Addr().String())
	portN, _ := strconv.Atoi(port)

	m := startLinkedMesh(t, []string{"egress"})
	east, west := m.east, m.west
	ctx := context.Background()
	et := &v1alpha1.EgressTarget{
		ObjectMeta: metav1.ObjectMeta{Name: "ledger", Namespace: "egress"},
		Spec: v1alpha1.EgressTargetSpec{HostName: "ledger", DNSName: host, Environment: "east", Squad: "core",
			Port: int32(portN), Protocol: v1alpha1.EgressProtocolTCP},
	}
	if err := east.Client.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	addr := waitMirror(t, west, "egress", "ledger-east", m.westGW.ip)
	waitListening(t, addr)

	app, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = app.Close() }()
	_ = app.(*net.TCPConn).SetReadBuffer(64 << 10)
	_ = app.SetWriteDeadline(time.Now().Add(20 * time.Second))
	chunk := make([]byte, 256<<10)
	var sent int64
	var werr error
	for werr == nil && sent < 256<<20 {
		var n int
		n, werr = app.Write(chunk)
		sent += int64(n)
	}
	if werr == nil {
		t.Fatalf("the caller sent %d MiB after the target's reset, all taken: the tunnel hangs and drops them", sent>>20)
	}
	if ne, ok := werr.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the caller's writes blocked for 20 s after %d MiB: the reset never reached it", sent>>20)
	}
	t.Logf("the caller's write failed after %d MiB: %v", sent>>20, werr)
}
