// Package certmanager tests deploy/cert-manager/gateway-identity.yaml, the
// cert-manager alternative to `backbone certs issue`: the manifests apply
// to a real API server with cert-manager's CRDs, and the identities
// cert-manager's own CA-issuer code signs from them are accepted by
// backbone's gateways. It is a module of its own so that cert-manager is
// never a dependency of backbone.
package certmanager
