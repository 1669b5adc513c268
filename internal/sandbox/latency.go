package sandbox

import (
	"fmt"
	"time"
)

// The clouds the sandbox's clusters pretend to run in, in the order
// clusters are named: the first is AWS eu-west-1, the second Azure
// westeurope, the third GCP europe-west1, then round again.
var clouds = []string{"aws", "azure", "gcp"}

var cloudRegions = map[string]string{"aws": "AWS eu-west-1", "azure": "Azure westeurope", "gcp": "GCP europe-west1"}

// roundTrips are the link latencies measured between those regions, as
// on the probe slide of the talk backbone grew from: AWS -> GCP 30 ms,
// Azure -> AWS 60 ms, and so on. Same cloud: 10 ms.
var roundTrips = map[[2]string]time.Duration{
	{"aws", "aws"}:     10 * time.Millisecond,
	{"aws", "gcp"}:     30 * time.Millisecond,
	{"aws", "azure"}:   25 * time.Millisecond,
	{"azure", "aws"}:   60 * time.Millisecond,
	{"azure", "gcp"}:   20 * time.Millisecond,
	{"azure", "azure"}: 10 * time.Millisecond,
	{"gcp", "aws"}:     60 * time.Millisecond,
	{"gcp", "azure"}:   20 * time.Millisecond,
	{"gcp", "gcp"}:     10 * time.Millisecond,
}

func cloudOf(index int) string { return clouds[index%len(clouds)] }

// linkLatency is the one-way delay of the proxy on the link from the
// index-th cluster to the other: half the slide's round trip.
func linkLatency(from, to int) time.Duration {
	rtt, ok := roundTrips[[2]string{cloudOf(from), cloudOf(to)}]
	if !ok {
		panic(fmt.Sprintf("no latency for %s -> %s", cloudOf(from), cloudOf(to)))
	}
	return rtt / 2
}
