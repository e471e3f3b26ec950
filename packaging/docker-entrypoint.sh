#!/bin/sh
# The image's entrypoint. Started as root (the default), it gives the state
# directory to the broker's user, then runs the command as that user: a
# volume made by the Python image, which ran as root, holds a root-owned
# sqlite.db and a 0600 broker.key that the broker could otherwise neither
# write nor read. Started as another user (docker run --user …), it only
# runs the command.
set -eu
user=${HPFEEDS_USER:-hpfeeds}
group=${HPFEEDS_GROUP:-$user}
dir=${HPFEEDS_STATE_DIR:-/app/var}
if [ "$(id -u)" = 0 ]; then
	# Only what is not the user's yet: a large volume is not rewritten at
	# every start, and a symlink is changed, not what it points to.
	# A read-only mount (a certificate, say) cannot change owner: say so,
	# and start all the same, as the image did before it had this script.
	find "$dir" \( ! -user "$user" -o ! -group "$group" \) -exec chown -h "$user:$group" {} + ||
		echo "docker-entrypoint: could not give everything in $dir to $user; the broker may not read or write some of it" >&2
	exec setpriv --reuid="$user" --regid="$group" --init-groups "$@"
fi
exec "$@"
