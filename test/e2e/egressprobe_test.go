package e2e

import (
	"bufio"
	"context"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestEgressProbeLeavesFromTheGateway: the probe of an egress target is a
// connection from the gateway processes serving it, never from the
// controller, which is given no way to resolve the target and only writes
// the status the gateways report. Two gateway replicas each probe and
// export their metrics; the controller's one status says the target is
// alive only while both reach it, follows it down and back up.
func TestEgressProbeLeavesFromTheGateway(t *testing.T) {
	testenv.RequireNetns(t)
	east := testenv.Start(t, "east")["east"]
	ctx := context.Background()
	installRBAC(t, east)
	p := newPKI(t, trustDomain)
	id := p.issue(t, "east")

	// The target records which process every connection comes from.
	cert, caPEM := creditScoreIdentity(t)
	targetAddr := testenv.ListenNetns(t, 14)
	addr := targetAddr.Addr().String()
	peers := &peerLog{}
	var mu sync.Mutex
	requests := map[string]int{}
	seen := func(r *http.Request) {
		mu.Lock()
		requests[r.Method+" "+r.URL.Path]++
		mu.Unlock()
	}
	srv := serveCreditScore(t, peers.wrap(targetAddr), cert, seen)
	_, port, _ := net.SplitHostPort(addr)
	resolve := creditScoreHost + "=" + testenv.NetnsAddr(14)

	// Only the gateways know where the target is (a private zone the
	// controller's resolver does not see, as an egress policy would let
	// only them out).
	gwArgs := []string{"--egress-resolve", resolve, "--egress-probe-period", "300ms", "--egress-probe-timeout", "2s"}
	gw1 := startGateway(t, east, 1, id, gwArgs...)
	gw2 := startGateway(t, east, 2, id, gwArgs...)
	registerService(t, east, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: v1alpha1.GatewayServiceName, Namespace: v1alpha1.SystemNamespace,
			Annotations: map[string]string{v1alpha1.GatewayIdentityAnnotation: "spiffe://" + trustDomain + "/cluster/east"},
		},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: v1alpha1.GatewayInboundPortName, Port: 4143}}},
	}, []string{gw1.ip, gw2.ip}, map[string]int32{v1alpha1.GatewayInboundPortName: 4143})
	ctl := startController(t, east, id, 3)

	et := &v1alpha1.EgressTarget{
		ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: "resource-a"},
		Spec: v1alpha1.EgressTargetSpec{HostName: "resource-a", DNSName: creditScoreHost, Environment: "east", Squad: "maxus",
			Port: int32(mustAtoi(t, port)), ProbePath: "/healthz", CABundle: caPEM},
	}
	if err := east.Client.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	status := func() (*v1alpha1.EgressTarget, *metav1.Condition) {
		var got v1alpha1.EgressTarget
		if east.Client.Get(ctx, types.NamespacedName{Namespace: et.Namespace, Name: et.Name}, &got) != nil {
			return nil, nil
		}
		return &got, meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady)
	}
	alive := func(want bool) func() bool {
		return func() bool {
			got, cond := status()
			return got != nil && got.Status.Alive != nil && *got.Status.Alive == want && cond != nil &&
				(cond.Status == metav1.ConditionTrue) == want && got.Status.LastProbeTime != nil
		}
	}
	waitFor(t, 30*time.Second, "EgressTarget resource-a Ready and alive", alive(true))
	// The first gateway to probe may make the target alive before the
	// other one has probed; the message then rests on both.
	restsOnBoth := func() bool {
		_, cond := status()
		return cond != nil && strings.Contains(cond.Message, gw1.ip+" in ") && strings.Contains(cond.Message, gw2.ip+" in ")
	}
	waitFor(t, 10*time.Second, "Ready's message resting on both gateways' probes", restsOnBoth)

	// Every connection the target received came from a gateway process,
	// both replicas probed, and the controller never connected.
	waitFor(t, 10*time.Second, "probes from both gateways", func() bool {
		byPID := peers.counts()
		return byPID[gw1.cmd.Process.Pid] > 0 && byPID[gw2.cmd.Process.Pid] > 0
	})
	for pid, n := range peers.counts() {
		switch pid {
		case gw1.cmd.Process.Pid, gw2.cmd.Process.Pid:
		case ctl.cmd.Process.Pid:
			t.Errorf("the controller opened %d connections to the egress target", n)
		case -1:
			unattributed(t, n, peers.counts())
		default:
			t.Errorf("%d connections to the egress target came from process %d, not a gateway", n, pid)
		}
	}
	mu.Lock()
	heads := requests["HEAD /healthz"]
	mu.Unlock()
	if heads == 0 {
		t.Errorf("the target saw no HEAD of the probe path: %v", requests)
	}

	series := `backbone_egress_up{target="backbone-system/resource-a"} `
	metricsOf := func(gw *gatewayProc) string { return get(t, "http://"+gw.admin+"/metrics") }
	for _, gw := range []*gatewayProc{gw1, gw2} {
		m := metricsOf(gw)
		if !strings.Contains(m, series+"1") || probeCount(m) == 0 {
			t.Errorf("gateway %s's metrics lack %s1 and a probe duration", gw.ip, series)
		}
	}
	if m := get(t, "http://"+net.JoinHostPort(testenv.NetnsAddr(3), "9091")+"/metrics"); strings.Contains(m, "backbone_egress_up") {
		t.Errorf("the controller exports backbone_egress_up, a probe it does not run")
	}

	// The target goes down: both gateways see it, the status follows.
	_ = srv.Close()
	waitFor(t, 30*time.Second, "EgressTarget resource-a not alive while the target is down", alive(false))
	if _, cond := status(); cond.Reason != "TargetUnreachable" {
		t.Errorf("Ready reason %s, want TargetUnreachable: %s", cond.Reason, cond.Message)
	}
	for _, gw := range []*gatewayProc{gw1, gw2} {
		waitFor(t, 10*time.Second, "gateway "+gw.ip+" exporting "+series+"0", func() bool {
			return strings.Contains(metricsOf(gw), series+"0")
		})
	}

	// Back on the same address: alive again, and up in both gateways.
	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	serveCreditScore(t, peers.wrap(again), cert, seen)
	waitFor(t, 30*time.Second, "EgressTarget resource-a alive again", alive(true))
	for _, gw := range []*gatewayProc{gw1, gw2} {
		waitFor(t, 10*time.Second, "gateway "+gw.ip+" exporting "+series+"1", func() bool {
			return strings.Contains(metricsOf(gw), series+"1")
		})
	}
	for pid, n := range peers.counts() {
		switch {
		case pid == -1:
			unattributed(t, n, peers.counts())
		case pid != gw1.cmd.Process.Pid && pid != gw2.cmd.Process.Pid:
			t.Errorf("after recovery a connection to the egress target came from process %d, not a gateway", pid)
		}
	}
}

// unattributed accepts a few connections whose client had closed before
// its process could be found — probes that gave up while the target was
// down sit in the listen backlog — but not more than one in ten.
func unattributed(t *testing.T, n int, all map[int]int) {
	t.Helper()
	total := 0
	for _, c := range all {
		total += c
	}
	if n > 2 && n*10 > total {
		t.Errorf("%d of %d connections to the egress target could not be traced to a process", n, total)
	} else {
		t.Logf("%d of %d connections closed before their process could be found", n, total)
	}
}

var probeCountRE = regexp.MustCompile(`backbone_egress_probe_duration_seconds_count\{target="backbone-system/resource-a"\} (\d+)`)

func probeCount(metrics string) int {
	m := probeCountRE.FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// peerLog counts accepted connections by the process that owns the
// client's socket, found through /proc: all the test's processes share one
// network namespace, so an address would not tell them apart.
type peerLog struct {
	mu    sync.Mutex
	byPID map[int]int
}

func (p *peerLog) wrap(l net.Listener) net.Listener { return &recordingListener{Listener: l, log: p} }

func (p *peerLog) add(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byPID == nil {
		p.byPID = map[int]int{}
	}
	p.byPID[pid]++
}

func (p *peerLog) counts() map[int]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int]int{}
	for k, v := range p.byPID {
		out[k] = v
	}
	return out
}

type recordingListener struct {
	net.Listener
	log *peerLog
}

// Accept looks the client up while it waits for the TLS handshake, so its
// socket is still open.
func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pid := -1
	client, cerr := netip.ParseAddrPort(c.RemoteAddr().String())
	server, serr := netip.ParseAddrPort(c.LocalAddr().String())
	if cerr == nil && serr == nil {
		// /proc may be read while the tables change: look again before
		// giving up (-1: the client closed before it could be found).
		for try := 0; pid == -1 && try < 5; try++ {
			if try > 0 {
				time.Sleep(20 * time.Millisecond)
			}
			pid = socketOwner(client, server)
		}
	}
	l.log.add(pid)
	return c, nil
}

// socketOwner is the process holding the TCP socket from local to remote,
// or -1. Both ends count: one local port may serve connections to other
// destinations at once, or have one in TIME_WAIT (no owner, inode 0).
func socketOwner(local, remote netip.AddrPort) int {
	inode := ""
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if inode = socketInode(table, local, remote); inode != "" {
			break
		}
	}
	if inode == "" {
		return -1
	}
	want := "socket:[" + inode + "]"
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if link, err := os.Readlink(fd); err == nil && link == want {
			pid, _ := strconv.Atoi(strings.Split(fd, "/")[2])
			return pid
		}
	}
	return -1
}

// socketInode finds the socket from local to remote in a /proc/net/tcp{,6}
// table, skipping those no process holds (inode 0).
func socketInode(table string, local, remote netip.AddrPort) string {
	f, err := os.Open(table)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		l, lok := procAddr(fields[1])
		r, rok := procAddr(fields[2])
		if lok && rok && sameAddrPort(l, local) && sameAddrPort(r, remote) && fields[9] != "0" {
			return fields[9]
		}
	}
	return ""
}

func sameAddrPort(a, b netip.AddrPort) bool {
	return a.Addr().Unmap() == b.Addr().Unmap() && a.Port() == b.Port()
}

// procAddr parses /proc/net/tcp's "0100007F:1F90": the address as the
// kernel stores it, 32-bit words in host (little-endian) order.
func procAddr(s string) (netip.AddrPort, bool) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), true
}
