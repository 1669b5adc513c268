# backbone's image: one static binary on distroless, running as non-root.
# CI of a real deployment builds and signs it (make image); it is not built
# by the test suite.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/backbone-mesh/backbone/internal/version.Version=${VERSION}" \
      -o /out/backbone ./cmd/backbone

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/backbone /usr/local/bin/backbone
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/backbone"]
