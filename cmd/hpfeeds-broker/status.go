package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
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
		url, ca      string
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
			client, err := statusClient(ca)
			if err != nil {
				return err
			}
			show := func(w io.Writer) error { return showStatus(cmd.Context(), client, url, asJSON, w) }
			if !loop {
				return show(cmd.OutOrStdout())
			}
			return watch(cmd.Context(), cmd.OutOrStdout(), show)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "http://127.0.0.1:9431", "the broker's exporter `URL` (http://[user:password@]host:port)")
	f.StringVar(&ca, "tls-ca", "", "CA certificate `FILE` to verify an https:// exporter with (one served with --web-config-file)")
	f.BoolVar(&asJSON, "json", false, "print the /identz, /chanz and /connz answers as one JSON object")
	f.BoolVar(&loop, "watch", false, fmt.Sprintf("redraw every %s until interrupted", watchEvery))
	return cmd
}

// statusClient is the HTTP client of the status command; with ca it trusts
// that certificate authority for https:// exporters.
func statusClient(ca string) (*http.Client, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	if ca == "" {
		return c, nil
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", ca)
	}
	c.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	return c, nil
}

func showStatus(ctx context.Context, c *http.Client, url string, asJSON bool, w io.Writer) error {
	r, err := status.Fetch(ctx, c, url)
	if err != nil {
		if u, perr := neturl.Parse(url); perr == nil {
			url = u.Redacted() // the password stays off the terminal
		}
	}
	if errors.Is(err, status.ErrUnreachable) {
		return fmt.Errorf("%s: %w (is the broker running with --exporter at that address?)", url, err)
	}
	if err != nil {
		return fmt.Errorf("--url=%s: %w", url, err)
	}
	if asJSON {
		return status.WriteJSON(w, r)
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
