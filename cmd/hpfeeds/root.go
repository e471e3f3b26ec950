package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
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
	"github.com/hpfeeds-go/hpfeeds/internal/version"
)

type connFlags struct {
	channels      []string
	ident, secret string
	host          string
	port          int
	tls           bool
	caFile        string
	serverName    string
	insecure      bool
	debug         bool
}

func (f *connFlags) add(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringArrayVarP(&f.channels, "chan", "c", nil, "`CHANNEL` (repeatable)")
	p.StringVarP(&f.ident, "ident", "i", "", "authkey `IDENT`")
	p.StringVarP(&f.secret, "secret", "s", "", "authkey `SECRET`")
	p.StringVar(&f.host, "host", "localhost", "broker `HOST`")
	p.IntVarP(&f.port, "port", "p", 10000, "broker `PORT`")
	p.BoolVar(&f.tls, "tls", false, "use TLS, verifying the broker with the system's CAs")
	p.StringVar(&f.caFile, "tls-ca", "", "CA certificate `FILE` to verify the broker with (implies --tls)")
	p.StringVar(&f.caFile, "tlscert", "", "the Python command's name for --tls-ca (`FILE`)")
	p.StringVar(&f.serverName, "tls-server-name", "", "`NAME` the broker's certificate must hold, when not --host (implies --tls)")
	p.BoolVar(&f.insecure, "insecure-skip-verify", false, "use TLS without verifying the broker's certificate: anyone on the path can read and change the session (tests only)")
	p.BoolVar(&f.debug, "debug", false, "log connection steps and every message on stderr")
}

// config returns the client's settings; warnings go to errw.
func (f *connFlags) config(errw io.Writer) (client.Config, error) {
	if f.ident == "" {
		return client.Config{}, errors.New("--ident is required")
	}
	cfg := client.Config{
		Addr:  net.JoinHostPort(f.host, strconv.Itoa(f.port)),
		Ident: f.ident, Secret: f.secret,
		// One attempt: a command reports a lost connection and exits.
		MinBackoff: time.Hour,
		Logger:     f.logger(errw),
	}
	if !f.tls && f.caFile == "" && f.serverName == "" && !f.insecure {
		cfg.InfoTimeout = plainInfoTimeout
		return cfg, nil
	}
	cfg.TLS = &tls.Config{ServerName: f.host}
	if f.serverName != "" {
		cfg.TLS.ServerName = f.serverName
	}
	if f.insecure {
		if f.caFile != "" || f.serverName != "" {
			return cfg, errors.New("--insecure-skip-verify checks nothing: leave out --tls-ca and --tls-server-name, or it")
		}
		cfg.TLS.InsecureSkipVerify = true
		logf(errw, "WARNING: --insecure-skip-verify: the broker's certificate is NOT verified; anyone between here and %s can read and change this session. Use --tls-ca instead.", cfg.Addr)
	}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return cfg, fmt.Errorf("--tls-ca: %w", err)
		}
		cfg.TLS.RootCAs = x509.NewCertPool()
		if !cfg.TLS.RootCAs.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("--tls-ca %s holds no PEM certificate", f.caFile)
		}
	}
	return cfg, nil
}

// logger logs on errw at debug level with --debug, and nothing otherwise.
func (f *connFlags) logger(errw io.Writer) *slog.Logger {
	if !f.debug {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// plainInfoTimeout bounds the wait for INFO without TLS: a broker sends it
// at once, while a TLS endpoint waits in silence for a handshake that never
// comes, until its own timeout (10 s by default) closes the connection.
const plainInfoTimeout = 3 * time.Second

// dial connects as the flags say, explaining certificate errors.
func (f *connFlags) dial(ctx context.Context, errw io.Writer) (*client.Client, error) {
	cfg, err := f.config(errw)
	if err != nil {
		return nil, err
	}
	cfg.Logger.Debug("connecting", "addr", cfg.Addr, "tls", cfg.TLS != nil, "ident", cfg.Ident)
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return nil, explain(cfg, err)
	}
	cfg.Logger.Debug("connected", "broker", c.BrokerName())
	return c, nil
}

// explain adds to a connection error which flag would help.
func explain(cfg client.Config, err error) error {
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	var recErr tls.RecordHeaderError
	switch {
	case cfg.TLS == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		return fmt.Errorf("%w (closed before INFO: if the endpoint is tls:, connect with --tls or --tls-ca FILE)", err)
	case cfg.TLS == nil && errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (no INFO within %v: if the endpoint is tls:, connect with --tls or --tls-ca FILE)", err, cfg.InfoTimeout)
	case errors.As(err, &recErr):
		return fmt.Errorf("%w (the endpoint speaks plain TCP: leave out --tls and the --tls-* flags)", err)
	case errors.As(err, &hostErr):
		return fmt.Errorf("%w (the certificate does not name %q: connect with --tls-server-name NAME, a name it holds, or reissue it with a subjectAltName for %q, see docs/broker.md)", err, hostErr.Host, hostErr.Host)
	case errors.As(err, &authErr):
		return fmt.Errorf("%w (give the CA that signed the broker's certificate with --tls-ca FILE)", err)
	}
	return err
}

func newRootCmd(out io.Writer) *cobra.Command {
	f := &connFlags{}
	root := &cobra.Command{
		Use:           "hpfeeds",
		Short:         "Subscribe, publish and benchmark against an hpfeeds broker",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetOut(out)
	f.add(root)
	var asJSON bool
	var output string
	sub := &cobra.Command{
		Use:   "subscribe",
		Short: "Print every message of the channels until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			msgs := cmd.OutOrStdout()
			if output != "" {
				file, err := os.OpenFile(output, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
				if err != nil {
					return fmt.Errorf("--output: %w", err)
				}
				defer file.Close()
				msgs = file
			}
			return subscribe(cmd.Context(), f, cmd.OutOrStdout(), msgs, asJSON)
		},
	}
	sub.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per message")
	sub.Flags().StringVarP(&output, "output", "o", "", "append messages to `FILE` instead of standard output")
	var stdin bool
	pub := &cobra.Command{
		Use:   "publish [WORDS…]",
		Short: "Publish the arguments, joined by spaces, to the channels",
		Long: `Publish the arguments, joined by spaces, to the channels; with --stdin,
publish each line of standard input instead, on one connection.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !stdin {
				return publish(cmd.Context(), f, cmd.OutOrStdout(), one([]byte(strings.Join(args, " "))))
			}
			if len(args) > 0 {
				return errors.New("--stdin publishes standard input's lines: give no words")
			}
			return publish(cmd.Context(), f, cmd.OutOrStdout(), lines(cmd.InOrStdin()))
		},
	}
	pub.Flags().BoolVar(&stdin, "stdin", false, "publish each non-empty line of standard input as one message, on one connection")
	sendfile := &cobra.Command{
		Use:   "sendfile FILE",
		Short: "Publish a file's contents to the channels",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return publish(cmd.Context(), f, cmd.OutOrStdout(), one(data))
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

// subscribe prints status lines on out and messages on msgs.
func subscribe(ctx context.Context, f *connFlags, out, msgs io.Writer, asJSON bool) error {
	if len(f.channels) == 0 {
		return errors.New("give at least one -c/--chan")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := f.dial(ctx, os.Stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	logf(out, "connected to %s", c.BrokerName())
	if err := c.Subscribe(f.channels...); err != nil {
		return err
	}
	log := f.logger(os.Stderr)
	log.Debug("subscribed", "channels", f.channels)
	enc := json.NewEncoder(msgs)
	for {
		select {
		case <-ctx.Done():
			logf(out, "closing connection.")
			return nil
		case err := <-c.Errors():
			return brokerError(err)
		case m := <-c.Messages():
			log.Debug("message", "channel", m.Channel, "ident", m.Ident, "bytes", len(m.Payload))
			if asJSON {
				rec := map[string]any{"ident": m.Ident, "channel": m.Channel}
				if utf8.Valid(m.Payload) {
					rec["payload"] = string(m.Payload)
				} else {
					rec["payload_base64"] = m.Payload
				}
				enc.Encode(rec)
			} else {
				logf(msgs, "publish to %s by %s: %s", m.Channel, m.Ident, printable(m.Payload))
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

// drainTimeout bounds the wait for the broker to read the last publish
// and close the connection. A broker that keeps a half-closed connection
// open, as the Python one may, has that long to refuse: the wait every
// publish had before Drain.
const drainTimeout = time.Second

// publish sends each payload to every channel on one connection, then
// waits until the broker has read them all (client.Drain): hpfeeds
// acknowledges nothing, and a refusal, an ERROR, is the only answer.
func publish(ctx context.Context, f *connFlags, out io.Writer, payloads iter.Seq2[[]byte, error]) error {
	if len(f.channels) == 0 {
		return errors.New("give at least one -c/--chan")
	}
	c, err := f.dial(ctx, os.Stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	logf(out, "connected to %s", c.BrokerName())
	log := f.logger(os.Stderr)
	n := 0 // payloads sent
	for payload, err := range payloads {
		if err != nil {
			return err
		}
		select { // a refusal of an earlier one ends the run at once
		case err := <-c.Errors():
			return refused(err, n)
		default:
		}
		for _, ch := range f.channels {
			if err := c.Publish(ch, payload); err != nil {
				return refused(cause(c, err), n)
			}
			log.Debug("published", "channel", ch, "bytes", len(payload))
		}
		n++
	}
	dctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	if err := c.Drain(dctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return refused(cause(c, err), n)
	}
	logf(out, "closing connection.")
	return nil
}

// cause is the reason the connection dropped, which the client reports on
// Errors, when err only says it is down.
func cause(c *client.Client, err error) error {
	if !errors.Is(err, client.ErrDisconnected) {
		return err
	}
	select {
	case e := <-c.Errors():
		return e
	case <-time.After(time.Second):
		return err
	}
}

// refused says what the broker answered, and for more than one message
// how far the run got.
func refused(err error, sent int) error {
	err = brokerError(err)
	if sent > 1 {
		return fmt.Errorf("%w (after %d messages sent: those before the refused one were published)", err, sent)
	}
	return err
}

// one yields payload alone.
func one(payload []byte) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) { yield(payload, nil) }
}

// maxLine bounds a line of publish --stdin, far above the broker's
// default --max-publish-size (1 MiB), so memory stays bounded.
const maxLine = 16 << 20

// lines yields each non-empty line of r, without its line ending.
func lines(r io.Reader) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), maxLine)
		for sc.Scan() {
			if len(sc.Bytes()) > 0 && !yield(sc.Bytes(), nil) {
				return
			}
		}
		switch err := sc.Err(); {
		case errors.Is(err, bufio.ErrTooLong):
			yield(nil, fmt.Errorf("--stdin: a line is longer than %d MiB", maxLine>>20))
		case err != nil:
			yield(nil, fmt.Errorf("--stdin: %w", err))
		}
	}
}
