package probe

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// defaultStatusWriteTimeout bounds one write of a Link's status.
	defaultStatusWriteTimeout = 10 * time.Second
	// A failed status write is tried again after statusRetryMin, doubling
	// up to statusRetryMax: an API server that refuses or holds writes
	// gets one write per Link at a time, and fewer the longer it fails.
	statusRetryMin = time.Second
	statusRetryMax = 16 * time.Second
)

// statusWriter writes one Link's status apart from its probe loop, so an
// API server that is slow, or takes writes and never answers, delays the
// status and never the probes (nor backbone_link_up). The loop offers the
// status it wants written; an offer replaces one not written yet (the
// latest wins), and one write at most is in flight.
type statusWriter struct {
	mu      sync.Mutex
	pending *unstructured.Unstructured // the latest status offered, not written yet
	failing bool                       // the latest write failed
	offered chan struct{}              // signals an offer to an idle writer
}

func newStatusWriter() *statusWriter {
	return &statusWriter{offered: make(chan struct{}, 1)}
}

// offer makes status the next one written, in place of any not written
// yet. It never waits.
func (w *statusWriter) offer(status *unstructured.Unstructured) {
	w.mu.Lock()
	w.pending = status
	w.mu.Unlock()
	select {
	case w.offered <- struct{}{}:
	default:
	}
}

// behind says whether the latest write failed. The loop then offers the
// status after every probe, so the retry writes the current one, not the
// one that failed.
func (w *statusWriter) behind() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failing
}

func (w *statusWriter) take() *unstructured.Unstructured {
	w.mu.Lock()
	defer w.mu.Unlock()
	status := w.pending
	w.pending = nil
	return status
}

// wrote records the outcome of writing status: a failed one is written
// again unless a newer one was offered meanwhile.
func (w *statusWriter) wrote(status *unstructured.Unstructured, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failing = err != nil
	if err != nil && w.pending == nil {
		w.pending = status
	}
}

// run writes what is offered until ctx ends, each write bounded by
// timeout; a status not written when ctx ends is dropped, as the Link is
// gone or another replica leads.
func (w *statusWriter) run(ctx context.Context, c client.Client, timeout time.Duration, log *slog.Logger) {
	retry := time.Duration(0)
	for {
		status := w.take()
		if status == nil {
			select {
			case <-ctx.Done():
				return
			case <-w.offered:
				continue
			}
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.Status().Apply(wctx, client.ApplyConfigurationFromUnstructured(status),
			client.FieldOwner(FieldOwner), client.ForceOwnership)
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.wrote(status, err)
		if err == nil {
			if retry > 0 {
				log.Info("link probe status written again", "link", status.GetName())
			}
			retry = 0
			continue
		}
		retry = min(max(2*retry, statusRetryMin), statusRetryMax)
		log.Warn("writing link probe status", "link", status.GetName(), "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter(retry)):
		}
	}
}
