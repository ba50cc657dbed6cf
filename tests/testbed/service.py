"""A stand-in for a Vox service on a testbed host.

It reads only its environment, as the real services do: it exits non-zero
(failing its Type=notify start) when a required variable is missing, and
serves its health endpoint with a fingerprint of each required value, so a
test can prove which values arrived. It never prints a value.

HEALTH_MODE in the environment makes the endpoint misbehave: `fail` (503),
`hang` (never answers), `flap` (503 and 200 by turns), `slow` (503 for the
first 1.5 s after start).

The platform's attach, for rotation tests: the fleet (voxcore) answers
`POST /attach` with 200 only when the `X-Voxcore-Secret` header holds its
VOXCORE_SECRET (or VOXCORE_SECRET_PREVIOUS, while a rotation overlaps), and
403 otherwise. A dialler with VOXCORE_FLEET (comma-separated fleet base URLs)
is healthy only while it can attach to every one of them; its health says
which fleet hosts it could not reach and which rejected its secret.
"""
import hashlib
import http.server
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

required = [k for k in os.environ.get("TESTBED_REQUIRED", "").split(",") if k]
missing = [k for k in required if k not in os.environ]
if missing:
    print("missing required variables: " + ", ".join(missing), file=sys.stderr)
    sys.exit(78)

service = os.environ["TESTBED_SERVICE"]
instance = os.environ.get("TESTBED_INSTANCE", "")
health_path = os.environ["TESTBED_HEALTH_PATH"]
mode = os.environ.get("HEALTH_MODE", "ok")
fingerprints = {
    k: hashlib.sha256(os.environ[k].encode()).hexdigest()[:16] for k in required
}


started = time.monotonic()
answered = 0
fleet = [u for u in os.environ.get("VOXCORE_FLEET", "").split(",") if u]
accepted = [
    os.environ[k] for k in ("VOXCORE_SECRET", "VOXCORE_SECRET_PREVIOUS") if os.environ.get(k)
]


def attach(base):
    """POST /attach on one fleet host with our secret: `ok`, `rejected` (403) or `unreachable`."""
    request = urllib.request.Request(
        base.rstrip("/") + "/attach",
        data=b"",
        method="POST",
        headers={"X-Voxcore-Secret": os.environ.get("VOXCORE_SECRET", "")},
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return "ok" if response.status == 200 else "unreachable"
    except urllib.error.HTTPError as error:
        return "rejected" if error.code == 403 else "unreachable"
    except (urllib.error.URLError, OSError):
        return "unreachable"


class Health(http.server.BaseHTTPRequestHandler):
    # Keep-alive, as real services' servers (uvicorn) answer: a client may
    # ask again on the same connection.
    protocol_version = "HTTP/1.1"

    def answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != health_path:
            self.send_error(404)
            return
        global answered
        if mode == "hang":
            time.sleep(3600)
        answered += 1
        status = 200
        if mode == "fail":
            status = 503
        elif mode == "flap" and answered % 2 == 1:
            status = 503
        elif mode == "slow" and time.monotonic() - started < 1.5:
            status = 503
        outcomes = {base: attach(base) for base in fleet}
        unattached = [base for base, outcome in outcomes.items() if outcome != "ok"]
        rejected = [base for base, outcome in outcomes.items() if outcome == "rejected"]
        if unattached:
            status = 503
        self.answer(
            status,
            {
                "service": service,
                "instance": instance,
                "status": status,
                "fingerprints": fingerprints,
                "unattached": unattached,
                "rejected": rejected,
            },
        )

    def do_POST(self):
        if self.path != "/attach" or service != "voxcore":
            self.send_error(404)
            return
        given = self.headers.get("X-Voxcore-Secret", "")
        ok = any(given == secret for secret in accepted)
        self.answer(200 if ok else 403, {"attached": ok})

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    # voxcore instances on one host share the fleet port.
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


server = Server((os.environ["TESTBED_BIND"], int(os.environ["TESTBED_PORT"])), Health)

# A numbered instance also answers on its own port, so a check can reach it alone.
if instance.isdigit() and os.environ.get("TESTBED_INSTANCE_PORT_BASE"):
    import threading

    class Worker(Health):
        def do_GET(self):
            if self.path == "/health/worker":
                self.path = health_path
            super().do_GET()

    own_port = int(os.environ["TESTBED_INSTANCE_PORT_BASE"]) + int(instance)
    worker = Server((os.environ["TESTBED_BIND"], own_port), Worker)
    threading.Thread(target=worker.serve_forever, daemon=True).start()

notify = os.environ.get("NOTIFY_SOCKET")
if notify:
    address = "\0" + notify[1:] if notify.startswith("@") else notify
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)

server.serve_forever()
