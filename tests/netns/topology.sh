#!/usr/bin/env bash
# A production-shaped topology in network namespaces, checked end to end:
#
#   edgetest-cl (client, "internet")  --veth--  edgetest-ed (edge node)  --veth--  edgetest-ov (overlay)
#   192.0.2.10/24, 2001:db8:c::10/64           edge-feed, edge-agent, edge         microVM backends on fdaa::/16
#                                               envs: 2001:db8:e::a (+203.0.113.7)  IPv6 only
#                                                     2001:db8:e::b
#
# Documentation address ranges only, and only inside namespaces this script
# creates; it removes everything it created (namespaces, and with them the
# veth pairs) on exit, by name. Needs root, iproute2, curl, openssl.
#
# Usage: tests/netns/topology.sh [bin_dir]   (default target/debug; needs
# edge, edge-agent, edge-feed and netns-backend built there)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(realpath "${1:-target/debug}")"
CL=edgetest-cl ED=edgetest-ed OV=edgetest-ov
WORK="$(mktemp -d /tmp/edgetest.XXXXXX)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ns in $CL $ED $OV; do ip netns del "$ns" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done >&2
  exit 1
}
ok() { echo "ok: $*"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
start() { # start NS LOG CMD... : a background process stopped by PID on exit
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" "$@" >"$WORK/$log.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
}

for b in edge edge-agent edge-feed netns-backend; do
  [ -x "$BIN/$b" ] || fail "$BIN/$b is not built"
done
for ns in $CL $ED $OV; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; in_ns "$ns" ip link set lo up; done

# client <-> edge
ip link add etc0 netns $CL type veth peer name ete0 netns $ED
in_ns $CL ip addr add 192.0.2.10/24 dev etc0
in_ns $CL ip -6 addr add 2001:db8:c::10/64 dev etc0 nodad
in_ns $CL ip link set etc0 up
in_ns $ED ip addr add 192.0.2.1/24 dev ete0
in_ns $ED ip -6 addr add 2001:db8:c::1/64 dev ete0 nodad
in_ns $ED ip link set ete0 up
in_ns $CL ip route add 203.0.113.0/24 via 192.0.2.1
in_ns $CL ip -6 route add 2001:db8:e::/64 via 2001:db8:c::1
# the envs' public addresses live on the edge node
in_ns $ED ip -6 addr add 2001:db8:e::a/128 dev lo nodad
in_ns $ED ip -6 addr add 2001:db8:e::b/128 dev lo nodad
in_ns $ED ip addr add 203.0.113.7/32 dev lo

# edge <-> overlay: IPv6 only
ip link add eto0 netns $ED type veth peer name eto1 netns $OV
in_ns $ED ip -6 addr add fdaa::1/64 dev eto0 nodad
in_ns $ED ip link set eto0 up
for a in fdaa::10 fdaa::11 fdaa::20 fdaa::30; do in_ns $OV ip -6 addr add $a/64 dev eto1 nodad; done
in_ns $OV ip link set eto1 up
in_ns $OV ip -6 route add default via fdaa::1 || true

# microVM stand-ins
start $OV a1 "$BIN/netns-backend" --listen '[fdaa::10]:8443' --tag a1 --name a.example.com --proxy
A1=$LAST_PID
start $OV a2 "$BIN/netns-backend" --listen '[fdaa::11]:8443' --tag a2 --name a.example.com --proxy
start $OV b1 "$BIN/netns-backend" --listen '[fdaa::20]:8443' --tag b1 --name b.example.com
start $OV db "$BIN/netns-backend" --listen '[fdaa::30]:5432' --tag db --raw

# the control plane's log, the edge and the agent on the edge node
cat >"$WORK/events.jsonl" <<'JSON'
{"aggregate_type":"env","aggregate_id":"acme/a/prod","event_type":"env.configured","payload":{"id":"acme/a/prod","ipv6":["2001:db8:e::a"],"ipv4":"203.0.113.7","ports":[5432,25]}}
{"aggregate_type":"env","aggregate_id":"acme/b/prod","event_type":"env.configured","payload":{"id":"acme/b/prod","ipv6":["2001:db8:e::b"],"ipv4":null,"ports":[]}}
{"aggregate_type":"instance","aggregate_id":"a1","event_type":"instance.up","payload":{"env":"acme/a/prod","process_type":"web","addr":"fdaa::10"}}
{"aggregate_type":"instance","aggregate_id":"a2","event_type":"instance.up","payload":{"env":"acme/a/prod","process_type":"web","addr":"fdaa::11"}}
{"aggregate_type":"instance","aggregate_id":"b1","event_type":"instance.up","payload":{"env":"acme/b/prod","process_type":"web","addr":"fdaa::20"}}
{"aggregate_type":"instance","aggregate_id":"adb","event_type":"instance.up","payload":{"env":"acme/a/prod","process_type":"db","addr":"fdaa::30"}}
{"aggregate_type":"route","aggregate_id":"ra","event_type":"route.created","payload":{"id":"ra","env":"acme/a/prod","hostname":"a.example.com","listen_port":443,"protocol":"tls_passthrough","backend_port":8443,"proxy_protocol":true}}
{"aggregate_type":"route","aggregate_id":"rb","event_type":"route.created","payload":{"id":"rb","env":"acme/b/prod","hostname":"b.example.com","listen_port":443,"protocol":"tls_passthrough","backend_port":8443}}
{"aggregate_type":"route","aggregate_id":"rdb","event_type":"route.created","payload":{"id":"rdb","env":"acme/a/prod","hostname":"db.a.example.com","listen_port":5432,"protocol":"tcp_raw","backend_process_type":"db","backend_port":5432}}
{"aggregate_type":"route","aggregate_id":"rsmtp","event_type":"route.created","payload":{"id":"rsmtp","env":"acme/a/prod","hostname":"mail.a.example.com","listen_port":25,"protocol":"tcp_raw","backend_port":25}}
JSON
cat >"$WORK/edge.toml" <<TOML
[admin]
listen = "127.0.0.1:9901"
[control]
socket = "$WORK/control.sock"
state_dir = "$WORK/edge-state"
[limits]
connect_timeout_ms = 1000
[overlay]
allowed_backends = ["fdaa::/16"]
TOML
cat >"$WORK/agent.toml" <<TOML
node_id = "edge-ns-1"
state_dir = "$WORK/agent-state"
[feed]
grpc = ["http://127.0.0.1:7443"]
poll = "http://127.0.0.1:8080"
[edge]
control_socket = "$WORK/control.sock"
[metrics]
listen = "127.0.0.1:9902"
TOML
start $ED feed "$BIN/edge-feed" serve --store "file:$WORK/events.jsonl" --grpc 127.0.0.1:7443 --http 127.0.0.1:8080
start $ED edge "$BIN/edge" --config "$WORK/edge.toml"
start $ED agent "$BIN/edge-agent" --config "$WORK/agent.toml"

# wait until the agent has applied every event (head 10)
for _ in $(seq 100); do
  applied=$(in_ns $ED curl -s 'http://127.0.0.1:8080/applied' || true)
  case "$applied" in *'"event_id":10'*) break ;; esac
  sleep 0.1
done
case "$applied" in *'"event_id":10'*) ok "agent applied the feed: $applied" ;; *) fail "agent did not apply the feed: $applied" ;; esac

get() { in_ns $CL curl -sk --max-time 5 "$@"; }

# SNI routing per env, over IPv6
body=$(get --resolve a.example.com:443:[2001:db8:e::a] https://a.example.com/) || fail "a.example.com over IPv6"
case "$body" in tag=a[12]*"proxy_src=[2001:db8:c::10]:"*"proxy_dst=[2001:db8:e::a]:443 authority=a.example.com"*) ok "env a over IPv6 with PROXY v2: $body" ;; *) fail "env a over IPv6: $body" ;; esac
body=$(get --resolve b.example.com:443:[2001:db8:e::b] https://b.example.com/) || fail "b.example.com"
case "$body" in tag=b1*) ok "env b over IPv6: $body" ;; *) fail "env b: $body" ;; esac
if get --resolve b.example.com:443:[2001:db8:e::a] https://b.example.com/ >/dev/null; then
  fail "env b's hostname served on env a's address"
fi
ok "env b's hostname is refused on env a's address"

# the dedicated IPv4 reaches IPv6-only backends, with an AF_INET PROXY v2 header
body=$(get --resolve a.example.com:443:203.0.113.7 https://a.example.com/) || fail "a.example.com over IPv4"
case "$body" in tag=a[12]*"peer=[fdaa::1]:"*"proxy_src=192.0.2.10:"*"proxy_dst=203.0.113.7:443 authority=a.example.com"*) ok "IPv4 client -> IPv6 backend with PROXY v2: $body" ;; *) fail "IPv4 client: $body" ;; esac
san=$(in_ns $CL sh -c 'openssl s_client -connect 203.0.113.7:443 -servername a.example.com </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName') || fail "openssl s_client"
case "$san" in *DNS:a.example.com*) ok "openssl s_client sees the backend's certificate: $(echo $san | tr -s ' ')" ;; *) fail "certificate: $san" ;; esac

# a raw TCP port on the dedicated IPv4; a denied port is closed
body=$(get http://203.0.113.7:5432/) || fail "raw TCP on 203.0.113.7:5432"
case "$body" in tag=db*) ok "tcp_raw on the dedicated IPv4: $body" ;; *) fail "tcp_raw: $body" ;; esac
if get http://203.0.113.7:25/ >/dev/null; then fail "port 25 (deny_ports) answered"; fi
ok "port 25 is closed (deny_ports)"
if get http://[2001:db8:e::a]:5432/ >/dev/null; then fail "5432 served on IPv6 (not in ipv6_extra_ports)"; fi
ok "5432 is not served on IPv6 (policy)"

# an instance stops mid-test: traffic moves on
kill "$A1"; wait "$A1" 2>/dev/null || true
for i in $(seq 10); do
  body=$(get --resolve a.example.com:443:[2001:db8:e::a] https://a.example.com/) || fail "request $i after a1 stopped"
  case "$body" in tag=a2*) ;; *) fail "request $i after a1 stopped: $body" ;; esac
done
ok "a1 stopped: 10/10 requests served by a2"
echo '{"aggregate_type":"instance","aggregate_id":"a1","event_type":"instance.down","payload":{}}' >>"$WORK/events.jsonl"
for _ in $(seq 50); do
  case "$(in_ns $ED curl -s 'http://127.0.0.1:8080/applied')" in *'"event_id":11'*) break ;; esac
  sleep 0.1
done
body=$(get --resolve a.example.com:443:203.0.113.7 https://a.example.com/) || fail "after instance.down"
case "$body" in tag=a2*) ok "instance.down applied; still served: $body" ;; *) fail "after instance.down: $body" ;; esac
echo "topology: all checks passed"
