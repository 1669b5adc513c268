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

// TestEgressTargetEnds: a TCP egress target's end reaches the caller in
// another cluster as it happened, through both gateways and the
// originator.
func TestEgressTargetEnds(t *testing.T) {
	testenv.RequireNetns(t)
	m := startLinkedMesh(t, []string{"egress"})
	t.Run("a reset fails a blocked caller", func(t *testing.T) { egressResetFailsABlockedCaller(t, m) })
	t.Run("a half-close lets the upload go on", func(t *testing.T) { egressHalfCloseLetsTheUploadGoOn(t, m) })
}

// tcpEgressTarget declares a TCP egress target named name in east for
// the listener l, and returns the address of its mirror's listener in
// west, once it listens.
func tcpEgressTarget(t *testing.T, m *linkedMesh, name string, l net.Listener) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(l.Addr().String())
	portN, _ := strconv.Atoi(port)
	et := &v1alpha1.EgressTarget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "egress"},
		Spec: v1alpha1.EgressTargetSpec{HostName: name, DNSName: host, Environment: "east", Squad: "core",
			Port: int32(portN), Protocol: v1alpha1.EgressProtocolTCP},
	}
	if err := m.east.Client.Create(context.Background(), et); err != nil {
		t.Fatal(err)
	}
	addr := waitMirror(t, m.west, "egress", name+"-east", m.westGW.ip)
	waitListening(t, addr)
	return addr
}

// egressResetFailsABlockedCaller: a TCP egress target that
// resets its connection while the gateway waits to hand its answer to a
// caller that does not read (the stream's flow-control window is full)
// fails the caller's connection. The gateway's write waiting for the
// window must wake and the stream be reset; otherwise the tunnel hangs,
// and the caller's uploads are taken and dropped as if delivered.
func egressResetFailsABlockedCaller(t *testing.T, m *linkedMesh) {
	// The target reads a little, answers more than every window holds,
	// and resets its connection while its answer is still held up.
	target := testenv.ListenNetns(t, 15)
	serveEach(target, func(c net.Conn) {
		_, _ = io.ReadFull(c, make([]byte, 1<<20))
		go func() { _, _ = c.Write(make([]byte, 64<<20)) }()
		time.Sleep(time.Second)
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	})
	addr := tcpEgressTarget(t, m, "ledger", target)

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

// egressHalfCloseLetsTheUploadGoOn: a target that reads a hello, answers,
// ends its side and reads on gets the caller's whole request and its end;
// the caller gets the whole answer and its end first.
func egressHalfCloseLetsTheUploadGoOn(t *testing.T, m *linkedMesh) {
	target := testenv.ListenNetns(t, 16)
	type result struct {
		n   int64
		err error
	}
	got := make(chan result, 1)
	serveEach(target, func(c net.Conn) {
		defer func() { _ = c.Close() }()
		// The caller's hello tells its connection from waitListening's,
		// which sends nothing.
		hello := make([]byte, 5)
		if _, err := io.ReadFull(c, hello); err != nil || string(hello) != "hello" {
			return
		}
		_, _ = c.Write([]byte("ready"))
		_ = c.(*net.TCPConn).CloseWrite()
		n, err := io.Copy(io.Discard, c)
		got <- result{n, err}
	})
	addr := tcpEgressTarget(t, m, "journal", target)

	app, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = app.Close() }()
	_ = app.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := app.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(app)
	if err != nil || string(answer) != "ready" {
		t.Fatalf("answer %q, %v; want %q and its end", answer, err, "ready")
	}
	upload := make([]byte, 4<<20)
	if _, err := app.Write(upload); err != nil {
		t.Fatalf("the request after the answer's end: %v", err)
	}
	_ = app.(*net.TCPConn).CloseWrite()
	select {
	case r := <-got:
		if r.err != nil || r.n != int64(len(upload)) {
			t.Errorf("the target read %d bytes and %v, want %d and the caller's end", r.n, r.err, len(upload))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the target never saw the caller's end")
	}
}
