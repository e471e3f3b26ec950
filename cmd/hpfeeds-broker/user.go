package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// newUserCmd is `hpfeeds-broker user`: manage users without SQL, in any
// store that can be written (every one but env).
func newUserCmd() *cobra.Command {
	var spec, mongoColl string
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Add, list, show and remove users in a credential store",
		Example: `  hpfeeds-broker user add --auth=sqlite.db --ident=sensor1 --pubchans=dionaea.capture
  hpfeeds-broker user list --auth=database+postgresql://hpfeeds@db/hpfeeds
  hpfeeds-broker user remove --auth=users.json --ident=sensor1`,
	}
	cmd.PersistentFlags().StringVar(&spec, "auth", "sqlite", "credential store `SPEC`, as for the broker")
	cmd.PersistentFlags().StringVar(&mongoColl, "mongo-collection", "auth_key", "MongoDB `COLLECTION` holding users")

	open := func(ctx context.Context) (auth.Editor, error) {
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		s, err := openStore(ctx, spec, quiet, mongoColl)
		if err != nil {
			return nil, err
		}
		e, ok := s.(auth.Editor)
		if !ok {
			s.Close()
			return nil, fmt.Errorf("--auth=%s is read-only: change its users where they are defined (for env, the HPFEEDS_<IDENT>_* variables)", auth.Redact(spec))
		}
		return e, nil
	}

	var u auth.User
	var pubs, subs string
	add := &cobra.Command{
		Use:   "add",
		Short: "Create a user, or replace the one with the same ident",
		Long:  "Create a user, or replace the one with the same ident. Without --secret one is generated and printed once.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if u.Ident == "" {
				return errors.New("--ident is required")
			}
			generated := u.Secret == ""
			if generated {
				b := make([]byte, 24)
				rand.Read(b)
				u.Secret = base64.RawURLEncoding.EncodeToString(b)
			}
			u.PubChans, u.SubChans = auth.SplitList(pubs), auth.SplitList(subs)
			e, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer e.Close()
			if err := e.PutUser(cmd.Context(), u); err != nil {
				return fmt.Errorf("adding %s to %s: %w", u.Ident, e, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s saved in %s\n", u.Ident, e)
			if generated {
				fmt.Fprintf(cmd.OutOrStdout(), "secret: %s\n(shown once: give it to the client now)\n", u.Secret)
			}
			return nil
		},
	}
	add.Flags().StringVar(&u.Ident, "ident", "", "the user's `IDENT`")
	add.Flags().StringVar(&u.Secret, "secret", "", "the `SECRET` (generated if omitted)")
	add.Flags().StringVar(&u.Owner, "owner", "", "`OWNER` (defaults to the ident)")
	add.Flags().StringVar(&pubs, "pubchans", "", "comma-separated `CHANNELS` the user may publish to")
	add.Flags().StringVar(&subs, "subchans", "", "comma-separated `CHANNELS` the user may subscribe to")

	list := &cobra.Command{
		Use:   "list",
		Short: "List users (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer e.Close()
			users, err := e.ListUsers(cmd.Context())
			if err != nil {
				return fmt.Errorf("listing users of %s: %w", e, err)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "IDENT\tOWNER\tPUBCHANS\tSUBCHANS")
			for _, u := range users {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", u.Ident, u.Owner, strings.Join(u.PubChans, ","), strings.Join(u.SubChans, ","))
			}
			return w.Flush()
		},
	}

	var ident string
	show := &cobra.Command{
		Use:   "show",
		Short: "Show one user (never its secret)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer e.Close()
			u, found, err := e.Lookup(cmd.Context(), ident)
			if err != nil {
				return fmt.Errorf("looking up %s in %s: %w", ident, e, err)
			}
			if !found {
				return fmt.Errorf("no user %q in %s", ident, e)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ident:    %s\nowner:    %s\npubchans: %s\nsubchans: %s\n",
				ident, u.Owner, strings.Join(u.PubChans, ","), strings.Join(u.SubChans, ","))
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove",
		Short: "Remove a user",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer e.Close()
			found, err := e.DeleteUser(cmd.Context(), ident)
			if err != nil {
				return fmt.Errorf("removing %s from %s: %w", ident, e, err)
			}
			if !found {
				return fmt.Errorf("no user %q in %s", ident, e)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s removed from %s\n", ident, e)
			return nil
		},
	}
	for _, c := range []*cobra.Command{show, remove} {
		c.Flags().StringVar(&ident, "ident", "", "the user's `IDENT`")
		c.MarkFlagRequired("ident")
	}
	cmd.AddCommand(add, list, show, remove)
	return cmd
}
