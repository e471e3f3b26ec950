package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/sqlstore"
)

const userCommands = "add, update, list, show, remove or init"

// userStore is the store every `user` command works on.
type userStore struct {
	spec, mongoColl string
}

// open opens the store; create lets a SQLite store make its file.
func (us *userStore) open(ctx context.Context, create bool) (auth.Store, error) {
	return openStore(ctx, us.spec, slog.New(slog.DiscardHandler), us.mongoColl, sqlstore.Settings{Create: create})
}

// editor opens a store that can be written.
func (us *userStore) editor(ctx context.Context, create bool) (auth.Editor, error) {
	s, err := us.open(ctx, create)
	if err != nil {
		return nil, err
	}
	e, ok := s.(auth.Editor)
	if !ok {
		s.Close()
		return nil, fmt.Errorf("--auth=%s is read-only: change its users where they are defined (for env, the HPFEEDS_<IDENT>_* variables)", auth.Redact(us.spec))
	}
	return e, nil
}

// exact looks ident up and insists on its spelling: a database whose
// collation finds "Alice" equal to "alice" must not let a command meant
// for one change the other.
func exact(ctx context.Context, s auth.Store, ident string) (auth.User, error) {
	u, found, err := s.Lookup(ctx, ident)
	switch {
	case err != nil:
		return u, fmt.Errorf("looking up %s in %s: %w", ident, s, err)
	case !found:
		return u, fmt.Errorf("no user %q in %s", ident, s)
	case u.Ident != ident:
		return u, fmt.Errorf("no user %q in %s, but %q, which the database finds equal: give that spelling", ident, s, u.Ident)
	}
	return u, nil
}

// newUserCmd is `hpfeeds-broker user`: manage users without SQL, in any
// store that can be written (every one but env, which can only be listed).
func newUserCmd() *cobra.Command {
	us := &userStore{}
	cmd := &cobra.Command{
		Use:   "user",
		Short: "Add, update, list, show and remove users in a credential store; create its table",
		Example: `  hpfeeds-broker user add --auth=sqlite.db --ident=sensor1 --pubchans=dionaea.capture
  hpfeeds-broker user update --auth=sqlite.db --ident=sensor1 --secret=-
  hpfeeds-broker user list --auth=database+postgresql://hpfeeds@db/hpfeeds --json
  hpfeeds-broker user remove --auth=users.json --ident=sensor1
  hpfeeds-broker user init --auth=database+mysql://hpfeeds@db/hpfeeds`,
		// A mistyped command ("user ad --ident=x") is named as such, not
		// taken for an unknown flag of `user`.
		Args:               cobra.ArbitraryArgs,
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("give a user command: " + userCommands)
			}
			hint := ""
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = "; did you mean " + s[0] + "?"
			}
			return fmt.Errorf("unknown user command %q (use %s)%s", args[0], userCommands, hint)
		},
	}
	cmd.PersistentFlags().StringVar(&us.spec, "auth", "sqlite", "credential store `SPEC`, as for the broker")
	cmd.PersistentFlags().StringVar(&us.mongoColl, "mongo-collection", "auth_key", "MongoDB `COLLECTION` holding users")
	cmd.AddCommand(newUserAddCmd(us), newUserUpdateCmd(us), newUserListCmd(us), newUserShowCmd(us), newUserRemoveCmd(us), newUserInitCmd(us))
	return cmd
}

// userFields are the flags that describe a user.
type userFields struct {
	ident, secret, owner, pubs, subs string
}

func (f *userFields) flags(cmd *cobra.Command, secretHelp string) {
	cmd.Flags().StringVar(&f.ident, "ident", "", "the user's `IDENT`")
	cmd.Flags().StringVar(&f.secret, "secret", "", secretHelp)
	cmd.Flags().StringVar(&f.owner, "owner", "", "`OWNER` (defaults to the ident; not in database+ stores, whose owner is the identifier)")
	cmd.Flags().StringVar(&f.pubs, "pubchans", "", "`CHANNELS` the user may publish to: comma-separated, or a JSON list")
	cmd.Flags().StringVar(&f.subs, "subchans", "", "`CHANNELS` the user may subscribe to: comma-separated, or a JSON list")
	cmd.MarkFlagRequired("ident")
}

// apply sets on u what the flags given on cmd say; with all, every field
// (add), else only the flags given (update). It returns their names.
func (f *userFields) apply(cmd *cobra.Command, spec string, u *auth.User, all bool) ([]string, error) {
	var changed []string
	given := func(name string) bool {
		if all || cmd.Flags().Changed(name) {
			changed = append(changed, name)
			return true
		}
		return false
	}
	var err error
	if given("owner") {
		if f.owner != "" && strings.HasPrefix(auth.Kind(spec), "database+") {
			return nil, errors.New("--owner: the auth_keys table has no owner column (the owner is always the identifier); leave --owner out")
		}
		u.Owner = f.owner
	}
	if given("pubchans") {
		if u.PubChans, err = channelList("pubchans", f.pubs); err != nil {
			return nil, err
		}
	}
	if given("subchans") {
		if u.SubChans, err = channelList("subchans", f.subs); err != nil {
			return nil, err
		}
	}
	if cmd.Flags().Changed("secret") {
		changed = append(changed, "secret")
		if u.Secret, err = readSecret(cmd.InOrStdin(), f.secret); err != nil {
			return nil, err
		}
	}
	return changed, nil
}

// channelList parses a channel flag: comma-separated names, or a JSON
// list as the Python broker's SQL writes them. Brackets and quotes in a
// name mean a JSON list gone wrong, not a channel.
func channelList(flag, v string) ([]string, error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "[") {
		var l []string
		if err := json.Unmarshal([]byte(v), &l); err != nil {
			return nil, fmt.Errorf("--%s %s: not a JSON list of channel names (%v); give one, or comma-separated names", flag, v, err)
		}
		return l, nil
	}
	l := auth.SplitList(v)
	for _, c := range l {
		if strings.ContainsAny(c, `[]"`) {
			return nil, fmt.Errorf("--%s: channel %q holds a bracket or quote; give a JSON list or comma-separated names", flag, c)
		}
	}
	return l, nil
}

// readSecret returns the --secret value; "-" reads it from the first line
// of standard input, so it stays out of the shell's history and ps.
func readSecret(stdin io.Reader, v string) (string, error) {
	if v == "-" {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("--secret -: reading standard input: %w", err)
		}
		v = strings.TrimRight(line, "\r\n")
	}
	if v == "" {
		return "", errors.New("--secret: empty; give the secret, or - to read it from standard input")
	}
	return v, nil
}

func newUserAddCmd(us *userStore) *cobra.Command {
	f := &userFields{}
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Create a user; an existing ident is refused (see update)",
		Long: `Create a user. An ident the store already holds, in any spelling its database
finds equal, is refused: change it with update. Without --secret one is
generated and printed once. Creates the SQLite store's file and table if missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u := auth.User{Ident: f.ident}
			if _, err := f.apply(cmd, us.spec, &u, true); err != nil {
				return err
			}
			generated := u.Secret == ""
			if generated {
				b := make([]byte, 24)
				rand.Read(b)
				u.Secret = base64.RawURLEncoding.EncodeToString(b)
			}
			// Only the default SQLite store is created by add; a
			// database+ file and table are made by init.
			e, err := us.editor(cmd.Context(), auth.Kind(us.spec) == auth.KindSQLite)
			if err != nil {
				return err
			}
			defer e.Close()
			if err := addUser(cmd.Context(), us.spec, e, u); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s added to %s\n", u.Ident, e)
			if generated {
				fmt.Fprintf(cmd.OutOrStdout(), "secret: %s\n(shown once: give it to the client now)\n", u.Secret)
			}
			return nil
		},
	}
	f.flags(cmd, "the `SECRET`, or - to read it from standard input (generated if omitted)")
	return cmd
}

// addUser writes u unless the store knows its ident; the default SQLite
// store gets its table first.
func addUser(ctx context.Context, spec string, e auth.Editor, u auth.User) error {
	if in, ok := e.(auth.Initializer); ok && auth.Kind(spec) == auth.KindSQLite {
		if _, err := in.Init(ctx); err != nil {
			return fmt.Errorf("%s: %w", e, err)
		}
	}
	// A database+ table is the operator's to create: say how.
	if c, ok := e.(auth.Checker); ok && strings.HasPrefix(auth.Kind(spec), "database+") {
		if err := c.Check(ctx); err != nil {
			return fmt.Errorf("%s: %w", e, err)
		}
	}
	old, found, err := e.Lookup(ctx, u.Ident)
	switch {
	case err != nil:
		return fmt.Errorf("looking up %s in %s: %w", u.Ident, e, err)
	case found && old.Ident != u.Ident:
		return fmt.Errorf("user %q not added to %s: it holds %q, which the database finds equal", u.Ident, e, old.Ident)
	case found:
		return fmt.Errorf("user %s already exists in %s: change it with `hpfeeds-broker user update`, which keeps what you do not give", u.Ident, e)
	}
	if err := e.PutUser(ctx, u); err != nil {
		return fmt.Errorf("adding %s to %s: %w", u.Ident, e, err)
	}
	return nil
}

func newUserUpdateCmd(us *userStore) *cobra.Command {
	f := &userFields{}
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Change what is given of an existing user, keeping the rest",
		Long: `Change an existing user: only the flags given change, and the secret only
with --secret (- reads it from standard input). A running sensor keeps working
unless its secret or channels are what changed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := us.editor(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer e.Close()
			u, err := exact(cmd.Context(), e, f.ident)
			if err != nil {
				return err
			}
			changed, err := f.apply(cmd, us.spec, &u, false)
			if err != nil {
				return err
			}
			if len(changed) == 0 {
				return errors.New("nothing to change: give --secret, --owner, --pubchans or --subchans")
			}
			if err := e.PutUser(cmd.Context(), u); err != nil {
				return fmt.Errorf("updating %s in %s: %w", u.Ident, e, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "user %s updated in %s: %s\n", u.Ident, e, strings.Join(changed, ", "))
			return nil
		},
	}
	f.flags(cmd, "the new `SECRET`, or - to read it from standard input")
	return cmd
}

// listedUser is what `user list --json` prints of a user: never the secret.
type listedUser struct {
	Ident    string   `json:"ident"`
	Owner    string   `json:"owner"`
	PubChans []string `json:"pubchans"`
	SubChans []string `json:"subchans"`
}

func newUserListCmd(us *userStore) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List users (never their secrets); env too",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := us.open(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer s.Close()
			l, ok := s.(auth.Lister)
			if !ok {
				return fmt.Errorf("--auth=%s cannot list its users", auth.Redact(us.spec))
			}
			users, err := l.ListUsers(cmd.Context())
			if err != nil {
				return fmt.Errorf("listing users of %s: %w", s, err)
			}
			return printUsers(cmd.OutOrStdout(), s.String(), users, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"store": …, "users": [{"ident", "owner", "pubchans", "subchans"}]}`)
	return cmd
}

func printUsers(out io.Writer, store string, users []auth.User, asJSON bool) error {
	if asJSON {
		listed := make([]listedUser, len(users))
		for i, u := range users {
			u = u.WithDefaults()
			listed[i] = listedUser{u.Ident, u.Owner, u.PubChans, u.SubChans}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Store string       `json:"store"`
			Users []listedUser `json:"users"`
		}{store, listed})
	}
	fmt.Fprintf(out, "users in %s:\n", store)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "IDENT\tOWNER\tPUBCHANS\tSUBCHANS")
	for _, u := range users {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", u.Ident, u.Owner, strings.Join(u.PubChans, ","), strings.Join(u.SubChans, ","))
	}
	return w.Flush()
}

func newUserShowCmd(us *userStore) *cobra.Command {
	return newIdentCmd(us, "show", "Show one user (never its secret)", false, func(cmd *cobra.Command, s auth.Store, u auth.User) error {
		fmt.Fprintf(cmd.OutOrStdout(), "store:    %s\nident:    %s\nowner:    %s\npubchans: %s\nsubchans: %s\n",
			s, u.Ident, u.Owner, strings.Join(u.PubChans, ","), strings.Join(u.SubChans, ","))
		return nil
	})
}

func newUserRemoveCmd(us *userStore) *cobra.Command {
	return newIdentCmd(us, "remove", "Remove a user", true, func(cmd *cobra.Command, s auth.Store, u auth.User) error {
		if _, err := s.(auth.Editor).DeleteUser(cmd.Context(), u.Ident); err != nil {
			return fmt.Errorf("removing %s from %s: %w", u.Ident, s, err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "user %s removed from %s\n", u.Ident, s)
		return nil
	})
}

// newIdentCmd is a command on the one user --ident names, spelled as
// stored; write needs a store that can be written.
func newIdentCmd(us *userStore, use, short string, write bool, do func(*cobra.Command, auth.Store, auth.User) error) *cobra.Command {
	var ident string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			open := us.open
			if write {
				open = func(ctx context.Context, create bool) (auth.Store, error) { return us.editor(ctx, create) }
			}
			s, err := open(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer s.Close()
			u, err := exact(cmd.Context(), s, ident)
			if err != nil {
				return err
			}
			return do(cmd, s, u)
		},
	}
	cmd.Flags().StringVar(&ident, "ident", "", "the user's `IDENT`")
	cmd.MarkFlagRequired("ident")
	return cmd
}

func newUserInitCmd(us *userStore) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the store's users table (or collection, or JSON file) as documented, if missing",
		Long: `Create what the store keeps its users in, as docs/stores.md documents it and
with a UNIQUE key on the identifier: the SQLite file and its authkeys table;
auth_keys for database+ URLs in the URL's dialect; the MongoDB collection with
a unique index on identifier; an empty JSON user file. What exists is kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if auth.Kind(us.spec) == auth.KindJSON {
				return initJSON(out, us.spec)
			}
			s, err := us.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer s.Close()
			in, ok := s.(auth.Initializer)
			if !ok {
				return fmt.Errorf("--auth=%s has nothing to create", auth.Redact(us.spec))
			}
			created, err := in.Init(cmd.Context())
			switch {
			case err != nil:
				return fmt.Errorf("%s: %w", s, err)
			case created:
				fmt.Fprintf(out, "created the users table of %s\n", s)
			default:
				fmt.Fprintf(out, "%s already has its users table; nothing changed\n", s)
			}
			return nil
		},
	}
}

// initJSON creates an empty user file, readable by its owner only.
func initJSON(out io.Writer, path string) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		fmt.Fprintf(out, "%s already exists; nothing changed\n", path)
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString("{}\n"); err != nil {
		f.Close()
		return err
	}
	fmt.Fprintf(out, "created the empty user file %s\n", path)
	return f.Close()
}
