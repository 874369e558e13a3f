#!/usr/bin/env bash
# Full-mode reliability run (issue 6): crash-consistency trials, destination faults, load and
# resource limits, the hostile-input suite, and fuzzing when scripts/fuzz.sh exists. Prints a
# summary table at the end; exits non-zero if any part failed or anything was lost or
# delivered twice. Not part of scripts/test.sh (it takes several minutes).
#
#   scripts/reliability.sh [fuzz-minutes]        (default 3)
#   PRIMA_RELIABILITY_SEED=<n>                    seed for the crash trials
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export TCP_NODELAY=1
export PRIMA_RELIABILITY_FULL=1
export PRIMA_RELIABILITY_SEED="${PRIMA_RELIABILITY_SEED:-$(date +%s)}"
FUZZ_MINUTES="${1:-3}"
LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/prima-reliability.XXXXXX")"
failed_parts=()

# Run one part; its output goes to $LOGDIR/<name>.log and (filtered) to the terminal.
part() {
  local name="$1"
  shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$LOGDIR/$name.log" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)"
  else
    echo "   FAILED ($((SECONDS - t0)) s); log: $LOGDIR/$name.log"
    grep -E "panicked|assert|LOST|DUPLICATE|MISMATCH" "$LOGDIR/$name.log" | head -n 20 | sed 's/^/   /'
    failed_parts+=("$name")
  fi
}

# key=value from the first "<tag> k=v ..." summary in $LOGDIR/<log>.
field() {
  local log="$1" tag="$2" key="$3"
  # Anywhere on a line: the test harness may print "test name ... " before it.
  grep -ho "$tag .*" "$LOGDIR/$log.log" 2>/dev/null | head -n 1 | tr ' ' '\n' |
    sed -n "s/^$key=//p" | head -n 1
}

echo "seed: $PRIMA_RELIABILITY_SEED; logs: $LOGDIR"
cargo build --quiet --features stand-in --bins --test crash_consistency --test node_limits --test node_recovery \
  --test node_storage --test hostile_input --test durability_trace --test node_e2e \
  --test cluster_partitions --test cluster_cas --test node_retention 2>&1 | tail -n 20

part crash cargo test --quiet --features stand-in --test crash_consistency -- --nocapture
part limits cargo test --quiet --features stand-in --test node_limits -- --nocapture --test-threads=1
part faults cargo test --quiet --features stand-in --test node_recovery -- --test-threads=2
part storage cargo test --quiet --features stand-in --test node_storage
part hostile cargo test --quiet --features stand-in --test hostile_input -- --nocapture
# Durability as system calls: data, fdatasync, rename, directory fsync before each answer.
part durability cargo test --quiet --features stand-in --test durability_trace -- --nocapture
# A header value that used to abort the worker, through processing with a model.
part poison cargo test --quiet --features stand-in --test node_e2e an_absurd_frame_count
# The worker killed on every try of a study: failed after [model] max_crashes, next study ok.
part crashloop cargo test --quiet --features stand-in --test node_recovery a_study_that_keeps_killing_the_worker
# Two writers racing on one cluster record, on the recommended nats-server and on 2.9.10.
part cas cargo test --quiet --features stand-in --test cluster_cas -- --nocapture
# The cluster under partitions (issue 33): fault proxies on routes, clients and PACS paths.
part partitions cargo test --quiet --features stand-in --test cluster_partitions -- --nocapture --test-threads=1
# Stuck peers (issue 29): a silent and a trickling destination beside a healthy one, an
# acceptance trickled a byte a second, a full PACS retried until it has room, a stopped model
# process making the node not ready.
part stuck cargo test --quiet --features stand-in --test node_recovery -- --nocapture --test-threads=1 silent_and_a_trickling trickled_a_byte_a_second a700_is_retried not_ready_until
# The Debian package (issue 31): release build, package, clean Debian root (minutes).
part package bash scripts/package.sh --test
# Retention (issue 32): a simulated week of small studies (disk and database flat), disk
# pressure on a tmpfs, keep_days, a late series, SIGKILL at every step of an eviction.
part retention cargo test --quiet --features stand-in --test node_retention -- --nocapture --test-threads=1

fuzz_execs="n/a"
fuzz_crashes="n/a"
if [ -x scripts/fuzz.sh ] || [ -f scripts/fuzz.sh ]; then
  part fuzz bash scripts/fuzz.sh "$FUZZ_MINUTES"
  # scripts/fuzz.sh ends with "fuzz total execs=N crashes=M" (OOMs and timeouts count).
  total_line="$(grep -hE '^fuzz total execs=[0-9]+ crashes=[0-9]+' "$LOGDIR/fuzz.log" | tail -n 1)"
  fuzz_execs="$(sed -E 's/.*execs=([0-9]+).*/\1/' <<<"$total_line")"
  fuzz_crashes="$(sed -E 's/.*crashes=([0-9]+).*/\1/' <<<"$total_line")"
  [ -n "$fuzz_execs" ] || fuzz_execs="n/a (no summary line)"
  [ -n "$fuzz_crashes" ] || fuzz_crashes="n/a"
else
  echo "fuzz: not available (scripts/fuzz.sh missing)"
fi

hostile_line="$(grep -hE '^[0-9]+ hostile cases, [0-9]+ failed' "$LOGDIR/hostile.log" | head -n 1)"
hostile_total="$(echo "$hostile_line" | awk '{print $1}')"
hostile_failed="$(echo "$hostile_line" | awk '{print $4}')"
hostile_passed=""
if [ -n "$hostile_total" ]; then
  hostile_passed="$((hostile_total - ${hostile_failed:-0}))/$hostile_total"
fi

lost="$(field crash CRASH-SUMMARY lost)"
dups="$(field crash CRASH-SUMMARY duplicates)"
lost_out="$(field crash CRASH-SUMMARY lost_outputs)"

printf '\n%-34s %s\n' "reliability summary" "(seed $PRIMA_RELIABILITY_SEED)"
printf '%-34s %s\n' "crash trials" "$(field crash CRASH-SUMMARY trials) ($(field crash CRASH-SUMMARY kills) SIGKILLs, $(field crash CRASH-SUMMARY seconds) s)"
printf '%-34s %s\n' "instances acknowledged" "$(field crash CRASH-SUMMARY acknowledged)"
printf '%-34s %s\n' "instances lost (must be 0)" "$lost"
printf '%-34s %s\n' "outputs / never delivered" "$(field crash CRASH-SUMMARY outputs) / $lost_out"
printf '%-34s %s\n' "duplicate deliveries (must be 0)" "$dups"
printf '%-34s %s\n' "in-doubt re-sends (same UID)" "$(field crash CRASH-SUMMARY in_doubt_resends)"
printf '%-34s %s\n' "load: associations x instances" "$(field limits LOAD-SUMMARY associations) x $(field limits LOAD-SUMMARY per_association), stored $(field limits LOAD-SUMMARY stored)/$(field limits LOAD-SUMMARY instances) in $(field limits LOAD-SUMMARY seconds) s"
printf '%-34s %s\n' "load: node peak RSS (MB)" "$(field limits LOAD-SUMMARY peak_rss_mb)"
printf '%-34s %s\n' "slow-loris closed after (s)" "$(field limits LORIS-SUMMARY partial_associate_closed_after_s) / $(field limits LORIS-SUMMARY partial_pdata_closed_after_s) / $(field limits LORIS-SUMMARY trickled_pdata_closed_after_s) (timeout $(field limits LORIS-SUMMARY read_timeout_s))"
printf '%-34s %s\n' "HTTP flood (1,024 open files)" "$(field limits HTTP-FLOOD-SUMMARY half_open) half-open + $(field limits HTTP-FLOOD-SUMMARY reopened) more: /healthz failed $(field limits HTTP-FLOOD-SUMMARY failed)/$(field limits HTTP-FLOOD-SUMMARY healthz), slowest $(field limits HTTP-FLOOD-SUMMARY slowest_ms) ms; C-ECHO $(field limits HTTP-FLOOD-SUMMARY echoes), stored $(field limits HTTP-FLOOD-SUMMARY stored)/5"
printf '%-34s %s\n' "disk floor (tmpfs)" "$(grep -ho 'FLOOR-SUMMARY .*' "$LOGDIR/limits.log" | head -n 1 | cut -d' ' -f2-)"
printf '%-34s %s\n' "disk full while processing" "delivered after space returned: $(field limits DISKFULL-SUMMARY delivered_after_space_returned)"
printf '%-34s %s\n' "hostile cases passed" "${hostile_passed:-?}"
passed() { [[ " ${failed_parts[*]} " == *" $1 "* ]] && echo "FAILED" || echo "$2"; }
printf '%-34s %s\n' "crash loop" "$(passed crashloop "study failed after 2 worker crashes, next study ok")"
printf '%-34s %s\n' "durability trace (objects checked)" "$(grep -ho '[0-9]* objects checked' "$LOGDIR/durability.log" | head -n 1 | cut -d' ' -f1)"
printf '%-34s %s\n' "poison header through processing" "$(passed poison "series skipped with its reason, next study ok")"
printf '%-34s %s\n' "partitions (seed, studies)" "$(field partitions partitions seed) $(field partitions partitions studies): sr $(field partitions partitions sr), amended $(field partitions partitions amended), failed $(field partitions partitions failed), lost $(field partitions partitions lost), duplicates $(field partitions partitions duplicates), $(field partitions partitions wall_s) s"
printf '%-34s %s\n' "CAS race (2.9.10: accepted twice)" "$(grep -ho 'cas-race server=/usr/sbin/nats-server .*' "$LOGDIR/cas.log" 2>/dev/null | sed -n 's/.*raw_double_accepts=\([0-9]*\) lost_with_modify=\([0-9]*\).*/\1 of 300 rounds, lost through modify: \2/p' | head -n 1)"
printf '%-34s %s\n' "slow destinations (healthy got)" "$(grep -ho 'at the healthy destination [0-9.]* s' "$LOGDIR/stuck.log" 2>/dev/null | awk '{print $5}' | sort -n | tail -n 1) s at worst after sending; SIGTERM to exit $(grep -ho 'SIGTERM to exit: [0-9.]* s' "$LOGDIR/stuck.log" 2>/dev/null | awk '{print $4}') s"
printf '%-34s %s\n' "trickled acceptance cut after (s)" "$(field stuck TRICKLED-AC-SUMMARY cut_after_s) (transfer_timeout_s 6, retried: $(field stuck TRICKLED-AC-SUMMARY attempts_so_far) attempts; healthy got it after $(field stuck TRICKLED-AC-SUMMARY healthy_s) s)"
printf '%-34s %s\n' "stopped model process" "not ready $(grep -ho 'not ready [0-9.]* s after the stop' "$LOGDIR/stuck.log" 2>/dev/null | awk '{print $3}') s after it stopped; $(passed stuck "ready again once replaced")"
printf '%-34s %s\n' "retention week (spool, state.db max)" "$(grep -ho 'RETENTION-SOAK spool max.*' "$LOGDIR/retention.log" 2>/dev/null | head -n 1 | cut -d' ' -f4-)"
printf '%-34s %s\n' "fuzz executions" "$fuzz_execs"
printf '%-34s %s\n' "fuzz crashes" "$fuzz_crashes"
printf '%-34s %s\n' "parts failed" "${failed_parts[*]:-none}"

status=0
[ "${#failed_parts[@]}" -eq 0 ] || status=1
[ "$lost" = "0" ] || status=1
[ "$dups" = "0" ] || status=1
[ "$lost_out" = "0" ] || status=1
part_lost="$(field partitions partitions lost)"
part_dups="$(field partitions partitions duplicates)"
[ -z "$part_lost" ] || [ "$part_lost" = "0" ] || status=1
[ -z "$part_dups" ] || [ "$part_dups" = "0" ] || status=1
exit $status
