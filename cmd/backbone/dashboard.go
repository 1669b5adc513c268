package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/internal/dashboard"
)

func init() { subcommands = append(subcommands, newDashboardCmd) }

func newDashboardCmd(root *rootOptions) *cobra.Command {
	var (
		contexts    []string
		allContexts bool
		listen      string
		period      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve a live page of the links: latency heatmap, health over time, mirrors, egress targets",
		Long: `Reads the Link and EgressTarget statuses of every cluster given, every
--period, and serves one page (everything from the binary, no CDN) with the
latency matrix as a heatmap, each link's latency and health over time, the
services mirrored over each link, and the egress targets with their probe.
The page refreshes itself; /api/state serves the same data as JSON.`,
		Example: `  backbone dashboard --all-contexts
  backbone dashboard --contexts east,west,platform --listen 127.0.0.1:8090`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			contexts, err := resolveContexts(root, contexts, allContexts)
			if err != nil {
				return err
			}
			clients := map[string]client.Client{}
			for _, name := range contexts {
				f := root.kube
				f.Context = name
				c, err := f.Client()
				if err != nil {
					return fmt.Errorf("context %s: %w", f.Context, err)
				}
				clients[f.Context] = c
			}
			srv := &dashboard.Server{Clusters: clients, Period: period, Log: newLogger("info")}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go srv.Run(ctx)
			hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = hs.Shutdown(sctx)
			}()
			fmt.Fprintf(cmd.OutOrStdout(), "backbone dashboard on http://%s/ (%d clusters)\n", l.Addr(), len(clients))
			if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&contexts, "contexts", nil, "kubeconfig contexts of the clusters to read (comma-separated)")
	cmd.Flags().BoolVar(&allContexts, "all-contexts", false, "read every context of the kubeconfig")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8090", "address to serve the page on")
	cmd.Flags().DurationVar(&period, "period", 3*time.Second, "how often the clusters are read")
	return cmd
}
