# Sourced by predict.sh: where clients reach the local server (leafnet serve, scripts/serve.sh), and how they
# authenticate.

# The URL clients use: the proxy in front of TorchServe (leafnet/profiles/proxy), on loopback at $PORT.
# TorchServe itself listens on 127.0.0.1:8085 and is never called directly.
proxy_url() {
  echo "http://127.0.0.1:${PORT:-8080}"
}

# The Authorization header line for the bearer token in TS_TOKEN (the GCE profile's proxy checks it), for
# curl's -H @file, so the token never appears in a command line that `ps` shows; nothing without one.
auth_header() {
  [ -z "${TS_TOKEN:-}" ] || printf 'Authorization: Bearer %s\n' "$TS_TOKEN"
}
