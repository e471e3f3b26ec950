package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Report is what `hpfeeds-broker status` shows: the three JSON answers.
type Report struct {
	Identz *Identz `json:"identz"`
	Chanz  *Chanz  `json:"chanz"`
	Connz  *Connz  `json:"connz"`
}

// Fetch asks the exporter at base (http://host:port) for a Report.
func Fetch(ctx context.Context, c *http.Client, base string) (*Report, error) {
	base = strings.TrimRight(base, "/")
	r := &Report{}
	for _, g := range []struct {
		path string
		v    any
	}{{"/identz", &r.Identz}, {"/chanz", &r.Chanz}, {"/connz", &r.Connz}} {
		if err := getJSON(ctx, c, base+g.path, g.v); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// ErrUnreachable is returned by Fetch when the exporter does not answer.
var ErrUnreachable = errors.New("exporter not reachable")

func getJSON(ctx context.Context, c *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("GET %s: %s: %s", req.URL.Redacted(), term(resp.Status), term(strings.TrimSpace(string(msg))))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: not a status answer (is it an hpfeeds broker's exporter?): %w", req.URL.Redacted(), err)
	}
	return nil
}

// term is s as a terminal shows it safely: as it is if every character is
// printable, else quoted as %q does (control characters, escape sequences,
// invalid UTF-8, C1 controls, bidi overrides and other format characters
// escaped). Idents, owners and channels come from the store, and a
// disconnect reason may quote any client (a refused channel, a spoofed
// ident): none may clear, rewrite or hide rows of the operator's terminal.
func term(s string) string {
	notPrint := func(r rune) bool { return !strconv.IsPrint(r) }
	// A value starting with a quote is quoted too, not to be read as one
	// that was escaped.
	if !utf8.ValidString(s) || strings.IndexFunc(s, notPrint) >= 0 || strings.HasPrefix(s, `"`) {
		return strconv.Quote(s)
	}
	return s
}

// WriteJSON writes r as indented JSON for `hpfeeds-broker status --json`.
// encoding/json escapes C0 controls but passes C1 controls, bidi overrides
// and other characters a terminal acts on: those are escaped as \uXXXX
// too, which JSON reads back as the same text.
func WriteJSON(w io.Writer, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	out := make([]byte, 0, len(b)+1)
	for _, c := range string(b) { // encoding/json wrote valid UTF-8
		switch {
		case c == '\n' || strconv.IsPrint(c):
			out = utf8.AppendRune(out, c)
		case c > 0xffff:
			hi, lo := utf16.EncodeRune(c)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		default:
			out = fmt.Appendf(out, `\u%04x`, c)
		}
	}
	_, err = w.Write(append(out, '\n'))
	return err
}

// WriteText writes r as the terminal tables of `hpfeeds-broker status`,
// every text from the broker through term.
func WriteText(w io.Writer, r *Report) error {
	now := r.Connz.Now
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SENSORS (%d idents, %d stale after %s without a publish)\n", len(r.Identz.Idents), r.Identz.Stale,
		time.Duration(r.Identz.StaleAfterSeconds*float64(time.Second)))
	fmt.Fprintln(tw, "IDENT\tOWNER\tSTATE\tCONNS\tLAST PUBLISH\tLAST LOGIN\tLAST DISCONNECT\t")
	for _, in := range r.Identz.Idents {
		state, last := "offline", ago(now, in.LastPublish)
		switch {
		case in.Stale:
			state = "STALE"
		case in.Connections > 0:
			state = "connected"
		}
		if !in.Publisher {
			last = "subscriber"
		}
		disc := "-"
		if !in.LastDisconnect.IsZero() {
			disc = ago(now, in.LastDisconnect) + " (" + term(in.LastReason) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n", term(in.Ident), term(in.Owner), state, in.Connections,
			last, ago(now, in.LastLogin)+" from "+term(in.LastAddr), disc)
	}
	fmt.Fprintf(tw, "\nCHANNELS (rates over the last minute)\n")
	fmt.Fprintln(tw, "CHANNEL\tPUBS\tSUBS\tMSG/S\tBYTES/S\tMESSAGES\tBYTES\tUNDELIVERED\tLAST PUBLISH\t")
	for _, c := range r.Chanz.Channels {
		undelivered := fmt.Sprint(c.Undelivered)
		if c.Unheard {
			undelivered += " NOBODY HEARS"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%d\t%s\t%s\t%s\t\n", term(c.Name), c.Publishers, c.Subscribers,
			c.MsgRate, c.ByteRate, c.Messages, humanBytes(c.Bytes), undelivered, ago(now, c.LastPublish))
	}
	if rs := r.Chanz.RetainStore; rs != nil {
		state := "ok"
		if rs.Failing {
			state = "FAILING"
		}
		fmt.Fprintf(tw, "\nRETAINED STORE %s: %d batches refused", state, rs.Failures)
		if rs.Failures > 0 {
			fmt.Fprintf(tw, ", the last one %s: %s", ago(now, rs.LastFailure), term(rs.LastError))
		}
		if rs.Restarts > 0 {
			fmt.Fprintf(tw, "; JetStream restarts after a write error: %d", rs.Restarts)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintf(tw, "\nCONNECTIONS (%d of %d)\n", len(r.Connz.Connections), r.Connz.Total)
	fmt.Fprintln(tw, "CID\tIDENT\tADDRESS\tENDPOINT\tTLS\tCONNECTED\tSUBSCRIPTIONS\tFRAMES IN/OUT\tBYTES IN/OUT\tQUEUED\tLAST PUBLISH\t")
	for _, c := range r.Connz.Connections {
		tls := "no"
		if c.TLS {
			tls = "yes"
		}
		ident := term(c.Ident)
		if c.Ident == "" {
			ident = "(authenticating)"
		}
		subs := make([]string, len(c.Subscriptions))
		for i, s := range c.Subscriptions {
			subs[i] = term(s)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s/%s\t%s\t%s\t\n", c.ID, ident, term(c.Addr), term(c.Endpoint), tls,
			ago(now, c.Since), strings.Join(subs, ","), c.FramesIn, c.FramesOut,
			humanBytes(c.BytesIn), humanBytes(c.BytesOut), humanBytes(c.BytesQueued), ago(now, c.LastPublish))
	}
	return tw.Flush()
}
