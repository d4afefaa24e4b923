# Sourced by serve.sh and predict.sh: facts about a TorchServe config.properties.

# The URL a local client uses for the config's inference address: $$PORT$$ (the Cloud Run profile) is
# filled from $PORT as TorchServe does, and a wildcard bind (0.0.0.0) is reached on loopback.
inference_url() {
  local address
  address=$(sed -n 's/^inference_address=//p' "$1")
  [ -n "$address" ] || { echo "error: no inference_address in $1" >&2; return 2; }
  address=${address//\$\$PORT\$\$/${PORT:-8080}}
  echo "${address/0.0.0.0/127.0.0.1}"
}

# The URL of the config's management address (loopback in every leafnet profile).
management_url() {
  local address
  address=$(sed -n 's/^management_address=//p' "$1")
  [ -n "$address" ] || { echo "error: no management_address in $1" >&2; return 2; }
  echo "${address/0.0.0.0/127.0.0.1}"
}

# Whether every worker of model $2 is READY, asked of management URL $1: /ping turns Healthy with the
# frontend, seconds before the workers have loaded the model. Sends the management key of a key_file.json
# in this directory (token authorization on).
workers_ready() {
  local body auth=() key
  key=$(key_file_key management)
  [ -z "$key" ] || auth=(-H "Authorization: Bearer $key")
  body=$(curl -sf -m 2 "${auth[@]}" "$1/models/$2") || return 1
  local listed ready
  listed=$(grep -c '"status": "' <<<"$body")
  ready=$(grep -c '"status": "READY"' <<<"$body")
  [ "$listed" -gt 0 ] && [ "$ready" -eq "$listed" ]
}

# curl arguments for token authorization: TS_TOKEN, else the inference key of a key_file.json that
# TorchServe wrote in this directory (profiles with disable_token_authorization=false).
auth_header() {
  local token=${TS_TOKEN:-}
  [ -n "$token" ] || token=$(key_file_key inference)
  [ -z "$token" ] || printf '%s\n' -H "Authorization: Bearer $token"
}

# The $1 ("inference", "management") key of the key_file.json TorchServe wrote in this directory; empty
# when there is none.
key_file_key() {
  [ -f key_file.json ] || return 0
  sed -n "/\"$1\"/,/}/s/.*\"key\": \"\\([^\"]*\\)\".*/\\1/p" key_file.json
}
