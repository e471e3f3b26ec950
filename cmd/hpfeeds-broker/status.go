package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/status"
)

// watchEvery is how often --watch redraws.
const watchEvery = 2 * time.Second

func newStatusCmd() *cobra.Command {
	var (
		url          string
		asJSON, loop bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a running broker's sensors, channels and connections",
		Long: `Show a running broker's sensors (stale ones marked), channels with their
rates and connections, read from its exporter (--exporter).`,
		Example: `  hpfeeds-broker status --url http://127.0.0.1:9431
  hpfeeds-broker status --json | jq '.identz.idents[] | select(.stale) | .ident'
  hpfeeds-broker status --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := &http.Client{Timeout: 10 * time.Second}
			show := func(w io.Writer) error { return showStatus(cmd.Context(), client, url, asJSON, w) }
			if !loop {
				return show(cmd.OutOrStdout())
			}
			return watch(cmd.Context(), cmd.OutOrStdout(), show)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "http://127.0.0.1:9431", "the broker's exporter `URL` (http://[user:password@]host:port)")
	f.BoolVar(&asJSON, "json", false, "print the /identz, /chanz and /connz answers as one JSON object")
	f.BoolVar(&loop, "watch", false, fmt.Sprintf("redraw every %s until interrupted", watchEvery))
	return cmd
}

func showStatus(ctx context.Context, c *http.Client, url string, asJSON bool, w io.Writer) error {
	r, err := status.Fetch(ctx, c, url)
	if errors.Is(err, status.ErrUnreachable) {
		return fmt.Errorf("%s: %w (is the broker running with --exporter at that address?)", url, err)
	}
	if err != nil {
		return fmt.Errorf("--url=%s: %w", url, err)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return status.WriteText(w, r)
}

// watch clears the terminal and shows the status until interrupted; an
// unreachable exporter is shown and retried, not fatal.
func watch(ctx context.Context, w io.Writer, show func(io.Writer) error) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		fmt.Fprint(w, "\033[H\033[2J")
		if err := show(w); err != nil {
			fmt.Fprintln(w, "hpfeeds-broker:", oneLine(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
