"""A stand-in for a Vox service on a testbed host.

It reads only its environment, as the real services do: it exits non-zero
(failing its Type=notify start) when a required variable is missing, and
serves its health endpoint with a fingerprint of each required value, so a
test can prove which values arrived. It never prints a value.

HEALTH_MODE in the environment makes the endpoint misbehave: `fail` (503),
`hang` (never answers).
"""
import hashlib
import http.server
import json
import os
import socket
import sys
import time

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


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != health_path:
            self.send_error(404)
            return
        if mode == "hang":
            time.sleep(3600)
        status = 503 if mode == "fail" else 200
        body = json.dumps(
            {"service": service, "instance": instance, "status": status, "fingerprints": fingerprints}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
