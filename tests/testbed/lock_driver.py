#!/usr/bin/env python3
"""Talks to `hostenv-host lock ...` on a testbed host the way an attacker or
a test needs to, and writes what happened as JSON to OUT.

  lock_driver.py flood  OUT -- ARGV...          a holder waiting for its lock is fed
                                               requests until it ends the channel
  lock_driver.py silent OUT SECONDS -- ARGV...  opens the channel, says nothing
  lock_driver.py wait   OUT SECONDS -- ARGV...  sends a holder line, then nothing
  lock_driver.py hold   OUT SECONDS -- ARGV...  takes the lock and keeps it, beating
  lock_driver.py beat   OUT SECONDS -- ARGV...  announces a 1 s run, then beats
  lock_driver.py swap   OUT HOW -- ARGV...      stages a file, lets the service user
                                               swap it (HOW: replace, rewrite, none),
                                               then asks for the switch

OUT gets {"seconds": how long the holder lived, "stdout": what it said,
"stderr": ..., "peakKb": its highest VmHWM seen, "written": bytes sent}.
"""

import json
import os
import subprocess
import sys
import threading
import time

HOLDER = b"hold 60 driver\n"


def start(argv):
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def collect(stream, into):
    def run():
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                return
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def peak_kb(pid):
    """VmHWM of `pid`'s youngest descendant (sudo's child, the holder), or of pid."""
    target = pid
    for _ in range(3):
        try:
            with open(f"/proc/{target}/task/{target}/children") as f:
                children = f.read().split()
        except OSError:
            break
        if not children:
            break
        target = int(children[-1])
    try:
        with open(f"/proc/{target}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def write(process, data):
    try:
        process.stdin.write(data)
        process.stdin.flush()
        return len(data)
    except (BrokenPipeError, OSError):
        return 0


def finish(out, process, began, out_bytes, err_bytes, threads, peak=0, written=0):
    try:
        process.stdin.close()
    except OSError:
        pass
    process.wait(timeout=120)
    for thread in threads:
        thread.join(timeout=10)
    with open(out, "w") as f:
        json.dump(
            {
                "seconds": round(time.time() - began, 2),
                "code": process.returncode,
                "stdout": out_bytes.decode("utf-8", "replace"),
                "stderr": err_bytes.decode("utf-8", "replace"),
                "peakKb": peak,
                "written": written,
            },
            f,
        )


def frames(process):
    """Reads the holder's answers one at a time from its stdout."""
    reader = process.stdout

    def line():
        text = b""
        while not text.endswith(b"\n"):
            byte = reader.read(1)
            if not byte:
                raise EOFError(text)
            text += byte
        return text[:-1].decode()

    head = line()
    assert head.startswith("describe "), head
    reader.read(int(head.split()[1]))
    while True:
        head = line()
        fields = head.split(" ")
        if fields[0] == "done":
            body = reader.read(int(fields[3]) + int(fields[4]))
            yield int(fields[1]), int(fields[2]), body[int(fields[3]):].decode()
        elif fields[0] == "broken":
            body = reader.read(int(fields[2]))
            yield int(fields[1]), "broken", body.decode()
            return


def request(seq, words, data=b"", marker="x"):
    return f"{marker}{seq} {words}\n{len(data)}\n".encode() + data


def main():
    how, out = sys.argv[1], sys.argv[2]
    split = sys.argv.index("--")
    extra, argv = sys.argv[3:split], sys.argv[split + 1 :]
    began = time.time()
    process = start(argv)
    if how == "swap":
        swap(out, process, began, extra[0])
        return
    out_bytes, err_bytes = bytearray(), bytearray()
    threads = [collect(process.stdout, out_bytes), collect(process.stderr, err_bytes)]
    peak, written = 0, 0
    if how == "flood":
        # One request is what a run sends with its lock step; the second
        # starts, and the holder must end the channel there.
        written += write(process, HOLDER)
        body = b"A" * (4 << 20)
        seq = 1
        while process.poll() is None and time.time() - began < 60:
            written += write(process, request(seq, "audit voxbridge", body))
            peak = max(peak, peak_kb(process.pid))
            seq += 1
    elif how == "silent":
        seconds = float(extra[0])
        while process.poll() is None and time.time() - began < seconds:
            time.sleep(0.1)
    elif how == "wait":
        written += write(process, HOLDER)
        seconds = float(extra[0])
        while process.poll() is None and time.time() - began < seconds:
            time.sleep(0.1)
    elif how in ("hold", "beat"):
        written += write(process, HOLDER if how == "hold" else b"hold 1 driver\n")
        seconds = float(extra[0])
        while process.poll() is None and time.time() - began < seconds:
            time.sleep(2)
            written += write(process, b"h")
    finish(out, process, began, out_bytes, err_bytes, threads, peak, written)


def swap(out, process, began, how):
    """An honest run's stage and switch, with the service user at work between them."""
    answers = []
    try:
        process.stdin.write(HOLDER)
        process.stdin.flush()
        replies = frames(process)
        answers.append(next(replies))  # the unasked read
        process.stdin.write(request(1, "stage voxbridge", b'STAGED="by the run"\n'))
        process.stdin.flush()
        answers.append(next(replies))
        staged = "/opt/voxbridge/.env.hostenv-new"
        if how == "replace":
            attack = f"printf 'PWNED=1\\n' > /opt/voxbridge/x && chmod 600 /opt/voxbridge/x && mv -f /opt/voxbridge/x {staged}"
        elif how == "rewrite":
            attack = f"printf 'PWNED=1\\n' > {staged}"
        else:
            attack = "true"
        subprocess.run(["su", "-s", "/bin/sh", "voxbridge", "-c", attack], check=True)
        process.stdin.write(request(2, "switch voxbridge"))
        process.stdin.flush()
        answers.append(next(replies))
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    with open(out, "w") as f:
        json.dump({"answers": answers, "seconds": round(time.time() - began, 2)}, f)


if __name__ == "__main__":
    main()
