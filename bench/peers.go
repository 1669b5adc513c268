package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/template"
	"time"
)

// A pair is two proxies with mTLS between them, standing for the west
// (client side) and east (server side) gateways of a cross-cluster path.
type pair struct {
	name  string
	procs []*exec.Cmd
}

func (p *pair) pids() []int {
	var out []int
	for _, c := range p.procs {
		out = append(out, c.Process.Pid)
	}
	return out
}

func (p *pair) stop() {
	for _, c := range p.procs {
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
	}
}

var nginxConf = template.Must(template.New("nginx").Parse(`
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
pid {{.Dir}}/nginx-{{.Side}}.pid;
error_log {{.Dir}}/nginx-{{.Side}}.log warn;
events { worker_connections 16384; }
stream {
  server {
    {{if eq .Side "west"}}
    listen {{.Listen}};
    proxy_half_close on;
    proxy_pass {{.Upstream}};
    proxy_ssl on;
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_certificate {{.Dir}}/west.crt;
    proxy_ssl_certificate_key {{.Dir}}/west.key;
    proxy_ssl_trusted_certificate {{.Dir}}/ca.crt;
    proxy_ssl_verify on;
    proxy_ssl_name east;
    proxy_ssl_session_reuse on;
    {{else}}
    listen {{.Listen}} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {{.Dir}}/east.crt;
    ssl_certificate_key {{.Dir}}/east.key;
    ssl_client_certificate {{.Dir}}/ca.crt;
    ssl_verify_client on;
    proxy_half_close on;
    proxy_pass {{.Upstream}};
    {{end}}
  }
}
`))

var haproxyConf = template.Must(template.New("haproxy").Parse(`
global
  nbthread 2
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
{{if eq .Side "west"}}
frontend west
  bind {{.Listen}}
  default_backend east
backend east
  server east {{.Upstream}} ssl crt {{.Dir}}/west.pem ca-file {{.Dir}}/ca.crt verify required verifyhost east sni str(east) ssl-min-ver TLSv1.3
{{else}}
frontend east
  bind {{.Listen}} ssl crt {{.Dir}}/east.pem ca-file {{.Dir}}/ca.crt verify required ssl-min-ver TLSv1.3
  default_backend backend
backend backend
  server backend {{.Upstream}}
{{end}}
`))

// startPair starts the east side (TLS server, forwarding to backend) and the
// west side (listening for applications, TLS client to eastVia — east's
// address, or a latency proxy in front of it).
func startPair(kind, dir, westListen, eastListen, eastVia, backend string) (*pair, error) {
	p := &pair{name: kind}
	for _, side := range []struct{ Side, Listen, Upstream string }{
		{"east", eastListen, backend},
		{"west", westListen, eastVia},
	} {
		var argv []string
		conf := filepath.Join(dir, fmt.Sprintf("%s-%s.conf", kind, side.Side))
		f, err := os.Create(conf)
		if err != nil {
			return nil, err
		}
		data := map[string]string{"Dir": dir, "Side": side.Side, "Listen": side.Listen, "Upstream": side.Upstream}
		switch kind {
		case "nginx":
			err = nginxConf.Execute(f, data)
			argv = []string{"nginx", "-c", conf, "-e", filepath.Join(dir, "nginx-"+side.Side+".log")}
		case "haproxy":
			err = haproxyConf.Execute(f, data)
			argv = []string{"haproxy", "-f", conf, "-db"}
		}
		_ = f.Close()
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		logf, _ := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%s.out", kind, side.Side)))
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			p.stop()
			return nil, fmt.Errorf("starting %s (%s): %w", kind, side.Side, err)
		}
		p.procs = append(p.procs, cmd)
		if err := waitListening(side.Listen, cmd); err != nil {
			out, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%s-%s.out", kind, side.Side)))
			p.stop()
			return nil, fmt.Errorf("%s (%s) does not listen on %s: %v\n%s", kind, side.Side, side.Listen, err, out)
		}
	}
	return p, nil
}

// waitListening waits until addr accepts connections, or the process
// exits.
func waitListening(addr string, cmd *exec.Cmd) error {
	exited := make(chan struct{})
	go func() {
		for {
			if syscall.Kill(cmd.Process.Pid, 0) != nil {
				close(exited)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the process exited")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("timed out")
}
