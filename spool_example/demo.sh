#!/usr/bin/env bash
# The README's quick start: a real run of queuectl on the example jobs of this folder.
# Needs `queuectl` on PATH (the README's first command installs it into .venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export QUEUECTL_SPOOL="$here/spool"
rm -rf "$QUEUECTL_SPOOL" "$here/finished.log"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# fast retries for the demo: 1s, 1s, ... instead of 2s, 4s, 8s
step queuectl config set backoff-base 1
step queuectl enqueue --file "$here/jobs.jsonl"
# a bare command, as with tsp or nq: it runs with this shell's environment, captured now
export DEMO_GREETING="hello from the shell that queued it"
step queuectl enqueue --id greet 'echo "$DEMO_GREETING"'
# a hook run by the worker each time a job is completed or dead (like tsp's TS_ONFINISH)
step queuectl config set on-finish "echo \"\$QUEUECTL_JOB_ID \$QUEUECTL_STATE\" >> '$here/finished.log'"
# another program drops a job: write it under tmp/, then move it into incoming/
cp "$here/dropped.json" "$QUEUECTL_SPOOL/tmp/dropped.json"
step mv "$QUEUECTL_SPOOL/tmp/dropped.json" "$QUEUECTL_SPOOL/incoming/dropped.json"
step ls "$QUEUECTL_SPOOL/pending"
step queuectl list
step queuectl worker start --count 2 --detach

# a recurring job: every minute (UTC), fired once per minute however many workers run
step queuectl schedule add every-minute '* * * * *' -c 'echo tick'
step queuectl schedule list
# wait (at most 60 s) until every job is final: report completes, cleanup and flaky end dead
step queuectl wait report hello urgent later low dropped greet --timeout 60
queuectl wait flaky too-slow cleanup --timeout 60 || echo "(exit $?: they ended dead, as intended)"
step queuectl worker stop
step queuectl status
step queuectl list
step queuectl dlq list
step queuectl logs flaky
step queuectl logs greet
step sort "$here/finished.log"
step queuectl show too-slow
step cat "$QUEUECTL_SPOOL"/supervisor-*.log
echo
echo "The spool is $QUEUECTL_SPOOL: look around with ls and cat."
