# Sourced by serve.sh and predict.sh: where clients reach the local server, and how they authenticate.

# The URL clients use: the proxy in front of TorchServe (config/proxy/*.Caddyfile), on loopback at $PORT.
# TorchServe itself listens on 127.0.0.1:8085 and is never called directly.
proxy_url() {
  echo "http://127.0.0.1:${PORT:-8080}"
}

# curl arguments for the bearer token in TS_TOKEN (the GCE profile's proxy checks it); none without one.
auth_header() {
  [ -z "${TS_TOKEN:-}" ] || printf '%s\n' -H "Authorization: Bearer $TS_TOKEN"
}
