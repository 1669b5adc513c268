package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// Inspection is the outcome of one handshake with a Link's gateway.
type Inspection struct {
	// Local is this cluster's identity at the time of the handshake.
	Local *x509.Certificate
	// Peer is the leaf the gateway presented, kept even when it failed
	// verification; nil when the handshake got no certificate.
	Peer *x509.Certificate
	// Reached is true when a TCP connection to the gateway was made, so
	// that Err, if any, is about TLS and the certificates.
	Reached bool
	// Err is nil when both sides accepted each other's certificate.
	Err error
	// At is when the handshake took place.
	At time.Time
}

// InspectFunc makes a handshake with the gateway a Link points at.
type InspectFunc func(ctx context.Context, link *v1alpha1.Link) Inspection

// h2Preface is an HTTP/2 client connection preface and an empty SETTINGS
// frame: enough for the gateway to answer with its own SETTINGS.
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")

// Handshake returns an InspectFunc that dials the Link's gateway addresses
// in order and makes one mTLS handshake with the cluster's identity and the
// TLS configuration the connection pool uses. A fresh connection, because
// pooled ones outlive the certificates they were made with: this shows
// what the next connection will meet. In TLS 1.3 the server judges the
// client certificate after the client's side of the handshake is done, so
// it also waits for the gateway's first HTTP/2 frame (or its alert).
func Handshake(id *identity.Files) InspectFunc {
	return func(ctx context.Context, link *v1alpha1.Link) Inspection {
		in := Inspection{Local: id.Leaf(), At: time.Now()}
		expected, err := identity.Parse(link.Spec.GatewayIdentity)
		if err != nil {
			in.Err = err
			return in
		}
		var dialErrs []error
		for _, a := range link.Spec.GatewayAddresses {
			addr := net.JoinHostPort(a.Host, strconv.Itoa(int(a.Port)))
			raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				dialErrs = append(dialErrs, err)
				continue
			}
			in.Reached, in.At = true, time.Now()
			in.Peer, in.Err = handshake(ctx, raw, id.ClientTLS(expected, "h2"))
			return in
		}
		in.Err = errors.Join(dialErrs...)
		return in
	}
}

func handshake(ctx context.Context, raw net.Conn, cfg *tls.Config) (peer *x509.Certificate, err error) {
	defer func() { _ = raw.Close() }()
	if d, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(d)
	}
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 {
			peer = cs.PeerCertificates[0]
		}
		return verify(cs)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return peer, err
	}
	if _, err := tc.Write(h2Preface); err != nil {
		return peer, err
	}
	// The gateway's SETTINGS frame, or the alert refusing our certificate.
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil {
		return peer, err
	}
	return peer, nil
}
