# backbone's build. `make test` is the test command CI runs.
SHELL := bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/backbone-mesh/backbone/internal/version.Version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
CONTROLLER_GEN := $(BIN)/controller-gen

.PHONY: all build sandbox sandbox-down test test-unit cluster-binaries generate verify-generated lint fmt vet tidy clean

all: build

build: ## Build bin/backbone.
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/backbone ./cmd/backbone

sandbox: build ## The quick start: a whole multi-cluster backbone on this machine.
	$(BIN)/backbone sandbox up

sandbox-down:
	$(BIN)/backbone sandbox down

cluster-binaries: ## Build (once, cached by version) the kube-apiserver and etcd the tests run.
	@hack/cluster-binaries.sh >/dev/null

test: cluster-binaries ## Unit, integration and end-to-end tests (real API servers), with the race detector.
	KUBEBUILDER_ASSETS="$$(hack/cluster-binaries.sh)" $(GO) test -race -count=1 -timeout 30m ./...
	cd deploy/cert-manager && KUBEBUILDER_ASSETS="$$(../../hack/cluster-binaries.sh)" $(GO) test -race -count=1 -timeout 10m ./...

test-unit: ## Tests that need no cluster binaries (the others skip, saying why).
	$(GO) test -count=1 ./...

$(CONTROLLER_GEN): hack/tools/controller-gen/go.mod
	cd hack/tools/controller-gen && $(GO) build -o $(CONTROLLER_GEN) sigs.k8s.io/controller-tools/cmd/controller-gen

generate: $(CONTROLLER_GEN) ## Regenerate deepcopy functions and CRD manifests from api/.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	$(CONTROLLER_GEN) crd:crdVersions=v1 paths=./api/... output:crd:artifacts:config=config/crd/bases

verify-generated: generate ## Fail when generated files are stale.
	@git diff --exit-code -- api config || { echo "generated files are stale: run make generate and commit the result" >&2; exit 1; }

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...
	cd deploy/cert-manager && $(GO) vet ./...

lint: vet ## gofmt, go vet and staticcheck.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-ed:" >&2; echo "$$out" >&2; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	cd deploy/cert-manager && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

tidy:
	$(GO) mod tidy

clean:
	rm -rf $(BIN)

IMAGE ?= ghcr.io/backbone-mesh/backbone:$(VERSION)
.PHONY: image
image: ## Build the container image (static binary, distroless nonroot); CI pushes it.
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .
