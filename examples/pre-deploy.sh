#!/usr/bin/env bash
# Pre-deployment check with bncheck: refuse to ship MODEL when its batch-norm layers are
# broken (audit) or when DATA, a sample of what production will feed it, drifts (drift), and
# leave the reports in OUT_DIR (JSON, Markdown, HTML when matplotlib is installed).
#
#   usage: pre-deploy.sh MODEL DATA [BASELINE.json] [OUT_DIR]
#
# With BASELINE.json (the drift report of the release in production), only findings that are
# new or worse than in it block the deployment. Exit codes: 0 ship, 1 do not ship (the gate
# failed), 2 the check could not run (bad model, data or options: see the message).
set -uo pipefail

usage="usage: pre-deploy.sh MODEL DATA [BASELINE.json] [OUT_DIR]"
model=${1:?$usage}
data=${2:?$usage}
baseline=${3:-}
out=${4:-bncheck-out}
fail_on=${BNCHECK_FAIL_ON:-error}
mkdir -p "$out" || exit 2

failed=0
run() {  # a bncheck command: exit 2 stops here, exit 1 marks the gate as failed
  "$@"
  local rc=$?
  if [ "$rc" -ge 2 ]; then
    echo "pre-deploy: could not run: $*" >&2
    exit 2
  fi
  if [ "$rc" -eq 1 ]; then failed=1; fi
}

with_baseline=()
if [ -n "$baseline" ]; then with_baseline=(--baseline "$baseline"); fi

run bncheck audit "$model" --format json --output "$out/audit.json" --fail-on "$fail_on" --quiet
run bncheck drift "$model" "$data" --format json --output "$out/drift.json" --channels \
  --fail-on "$fail_on" --quiet ${with_baseline[@]+"${with_baseline[@]}"}

# Reports for people, rendered from the JSON (same run, same verdict; --exit-zero: rendering
# is not the gate).
bncheck report "$out/audit.json" --format markdown --output "$out/audit.md" --exit-zero --quiet || exit 2
bncheck report "$out/drift.json" --format markdown --output "$out/drift.md" --exit-zero --quiet || exit 2
if python3 -c "import matplotlib" >/dev/null 2>&1; then
  bncheck report "$out/drift.json" --format html --output "$out/drift.html" --exit-zero --quiet || exit 2
fi

bncheck report "$out/audit.json" --quiet || true  # one line each: the verdicts of the gate
bncheck report "$out/drift.json" --quiet || true
if [ "$failed" -ne 0 ]; then
  echo "pre-deploy: DO NOT SHIP $model (reports in $out/)" >&2
  exit 1
fi
echo "pre-deploy: $model may ship (reports in $out/)"
exit 0
