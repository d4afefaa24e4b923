# shellcheck shell=bash
# Sourced by scripts/deploy_cloudrun.sh and scripts/deploy_gce.sh: option parsing, required settings and
# the one place where commands run or, with --dry-run, are printed (one per line, quoted so that the line
# runs as it stands: what Python's shlex.quote would write). Pure bash, no other tool: bash 3.2 or later.

# The deploy script itself (absolute, since the next line moves away): its header comment is its --help.
DEPLOY_SCRIPT=${BASH_SOURCE[1]}
[[ $DEPLOY_SCRIPT == /* ]] || DEPLOY_SCRIPT=$PWD/$DEPLOY_SCRIPT
# Paths (config/...) are relative to the repository root, wherever the script was started from.
cd "${BASH_SOURCE[0]%/*}/../.." || exit 2

DRY_RUN=0

# One line on stderr and exit 2: a usage or configuration error the user can fix.
die() {
  printf 'error: %s\n' "$1" >&2
  exit 2
}

# Notes for the user (what to do next) go to stderr, so a dry run's stdout holds the commands alone.
note() {
  printf '%s\n' "$*" >&2
}

shell_quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

command_line() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(shell_quote "$word")"
  done
  printf '%s\n' "$line"
}

# A real run logs each command on stderr before running it, as `set -x` would.
announce() {
  printf '+ %s\n' "$(command_line "$@")" >&2
}

# run CMD...: print CMD with --dry-run; otherwise announce and run it.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    command_line "$@"
  else
    announce "$@"
    "$@"
  fi
}

# capture VAR CMD...: like run, keeping CMD's output in VAR; a dry run stores a placeholder, <VAR>.
capture() {
  local _capture_var=$1 _capture_output
  shift
  if [ "$DRY_RUN" = 1 ]; then
    command_line "$@"
    _capture_output="<$_capture_var>"
  else
    announce "$@"
    _capture_output=$("$@")
  fi
  printf -v "$_capture_var" '%s' "$_capture_output"
}

# The deploy script's first comment block, without the `# `.
usage() {
  local line
  while IFS= read -r line; do
    case $line in
      '#!'*) ;;
      '#'*)
        line=${line#\#}
        printf '%s\n' "${line# }"
        ;;
      *) return 0 ;;
    esac
  done <"$DEPLOY_SCRIPT"
}

# parse_options ARG...: sets the variables that the caller's OPTIONS ("--flag:VAR", takes a value as
# `--flag V` or `--flag=V`) and SWITCHES ("--flag:VAR", set to 1) name; --dry-run and --help are common
# to all. Values from flags override those from the environment.
parse_options() {
  local arg name spec value found
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run)
        DRY_RUN=1
        continue
        ;;
    esac
    found=""
    for spec in ${SWITCHES[@]+"${SWITCHES[@]}"}; do
      if [ "$arg" = "${spec%%:*}" ]; then
        printf -v "${spec#*:}" '%s' 1
        found=1
        break
      fi
    done
    [ -z "$found" ] || continue
    name=${arg%%=*}
    for spec in ${OPTIONS[@]+"${OPTIONS[@]}"}; do
      [ "$name" = "${spec%%:*}" ] || continue
      if [ "$name" != "$arg" ]; then
        value=${arg#*=}
      elif [ $# -gt 0 ]; then
        value=$1
        shift
      else
        die "$name needs a value (see --help)"
      fi
      printf -v "${spec#*:}" '%s' "$value"
      found=1
      break
    done
    [ -n "$found" ] || die "unknown option $arg (see --help)"
  done
}

# require VAR FLAG: stop with one line when a required setting is empty.
require() {
  [ -n "${!1:-}" ] || die "$1 is not set: pass $2 or export $1 (see --help)"
}

# require_count VAR FLAG: the setting must be a whole number.
require_count() {
  [[ ${!1} =~ ^[0-9]+$ ]] || die "$2 must be a whole number, got '${!1}'"
}

# A real run needs the Google Cloud CLI; a dry run needs nothing.
require_gcloud() {
  [ "$DRY_RUN" = 1 ] || command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or add --dry-run to see the commands"
}

# serve_image: IMAGE, or the Artifact Registry path that .github/workflows/image.yml pushes to, from
# REGION, PROJECT, REPOSITORY and IMAGE_TAG; IMAGE_NAME is leafnet-serve, or leafnet-serve-gpu for a GPU
# deployment (docker/serve-gpu.Dockerfile, built and pushed by hand: docs/gpu.md).
serve_image() {
  if [ -n "${IMAGE:-}" ]; then
    printf '%s\n' "$IMAGE"
  else
    printf '%s\n' "$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/${IMAGE_NAME:-leafnet-serve}:$IMAGE_TAG"
  fi
}

# Fail early, with gcloud's own message, when the image is not in the registry (e.g. image.yml has not
# finished building the released commit): a deployment would otherwise fail later and less clearly.
check_image() {
  run gcloud artifacts docker images describe "$1" --format none
}
