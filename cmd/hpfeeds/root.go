package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/client"
)

type connFlags struct {
	channels      []string
	ident, secret string
	host          string
	port          int
	tls           bool
	caFile        string
}

func (f *connFlags) add(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringArrayVarP(&f.channels, "chan", "c", nil, "`CHANNEL` (repeatable)")
	p.StringVarP(&f.ident, "ident", "i", "", "authkey `IDENT`")
	p.StringVarP(&f.secret, "secret", "s", "", "authkey `SECRET`")
	p.StringVar(&f.host, "host", "localhost", "broker `HOST`")
	p.IntVarP(&f.port, "port", "p", 10000, "broker `PORT`")
	p.BoolVar(&f.tls, "tls", false, "use TLS")
	p.StringVar(&f.caFile, "tlscert", "", "CA certificate `FILE` to verify the broker with (implies --tls)")
}

func (f *connFlags) config() (client.Config, error) {
	if f.ident == "" {
		return client.Config{}, errors.New("--ident is required")
	}
	cfg := client.Config{
		Addr:  net.JoinHostPort(f.host, strconv.Itoa(f.port)),
		Ident: f.ident, Secret: f.secret,
		// One attempt: a command reports a lost connection and exits.
		MinBackoff: time.Hour,
	}
	if f.tls || f.caFile != "" {
		cfg.TLS = &tls.Config{ServerName: f.host}
		if f.caFile != "" {
			pem, err := os.ReadFile(f.caFile)
			if err != nil {
				return cfg, err
			}
			cfg.TLS.RootCAs = x509.NewCertPool()
			if !cfg.TLS.RootCAs.AppendCertsFromPEM(pem) {
				return cfg, fmt.Errorf("%s holds no PEM certificate", f.caFile)
			}
		}
	}
	return cfg, nil
}

func newRootCmd(out io.Writer) *cobra.Command {
	f := &connFlags{}
	root := &cobra.Command{
		Use:           "hpfeeds",
		Short:         "Subscribe, publish and benchmark against an hpfeeds broker",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	f.add(root)
	var asJSON bool
	sub := &cobra.Command{
		Use:   "subscribe",
		Short: "Print every message of the channels until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return subscribe(cmd.Context(), f, cmd.OutOrStdout(), asJSON)
		},
	}
	sub.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per message")
	pub := &cobra.Command{
		Use:   "publish [WORDS…]",
		Short: "Publish the arguments, joined by spaces, to the channels",
		RunE: func(cmd *cobra.Command, args []string) error {
			return publish(cmd.Context(), f, cmd.OutOrStdout(), []byte(strings.Join(args, " ")))
		},
	}
	sendfile := &cobra.Command{
		Use:   "sendfile FILE",
		Short: "Publish a file's contents to the channels",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return publish(cmd.Context(), f, cmd.OutOrStdout(), data)
		},
	}
	root.AddCommand(sub, pub, sendfile, newBenchCmd(f))
	return root
}

func logf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "[feedcli] "+format+"\n", args...)
}

// printable shows a payload as text when it is, and as hex otherwise (the
// Python command crashes on binary payloads).
func printable(p []byte) string {
	if utf8.Valid(p) && !strings.ContainsFunc(string(p), func(r rune) bool {
		return r < 0x20 && r != '\n' && r != '\r' && r != '\t'
	}) {
		return string(p)
	}
	n := min(len(p), 20)
	s := fmt.Sprintf("%x", p[:n])
	if len(p) > n {
		s += "..."
	}
	return s
}

func subscribe(ctx context.Context, f *connFlags, out io.Writer, asJSON bool) error {
	if len(f.channels) == 0 {
		return errors.New("give at least one -c/--chan")
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	logf(out, "connected to %s", c.BrokerName())
	if err := c.Subscribe(f.channels...); err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for {
		select {
		case <-ctx.Done():
			logf(out, "closing connection.")
			return nil
		case err := <-c.Errors():
			return brokerError(err)
		case m := <-c.Messages():
			if asJSON {
				rec := map[string]any{"ident": m.Ident, "channel": m.Channel}
				if utf8.Valid(m.Payload) {
					rec["payload"] = string(m.Payload)
				} else {
					rec["payload_base64"] = m.Payload
				}
				enc.Encode(rec)
			} else {
				logf(out, "publish to %s by %s: %s", m.Channel, m.Ident, printable(m.Payload))
			}
		}
	}
}

func brokerError(err error) error {
	var be *client.BrokerError
	if errors.As(err, &be) {
		return fmt.Errorf("error message from broker: %s", be.Text)
	}
	return err
}

// publish sends payload to every channel, then waits briefly for an ERROR:
// hpfeeds acknowledges nothing, so a refusal is the only answer.
func publish(ctx context.Context, f *connFlags, out io.Writer, payload []byte) error {
	if len(f.channels) == 0 {
		return errors.New("give at least one -c/--chan")
	}
	cfg, err := f.config()
	if err != nil {
		return err
	}
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	logf(out, "connected to %s", c.BrokerName())
	for _, ch := range f.channels {
		if err := c.Publish(ch, payload); err != nil {
			return err
		}
	}
	select {
	case err := <-c.Errors():
		return brokerError(err)
	case <-time.After(time.Second):
	}
	logf(out, "closing connection.")
	return nil
}
