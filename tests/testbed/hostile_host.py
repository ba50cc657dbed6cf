#!/usr/bin/env python3
"""A host program whose root is hostile, for one testbed host: installed in
place of /usr/local/sbin/hostenv-host (the real one kept beside it), it
answers `describe` and `version` as the real program does, so a run takes it
for a ready host, and answers the lock step the way /etc/hostile-mode says:

  overflow  an answer whose lengths overflow any add
  flood     a description announcing 999999999 bytes, then bytes without end
  stall     the lock, then silence
  garbage   an answer full of escapes, a carriage return and noncharacters
"""

import os
import subprocess
import sys
import time

REAL = "/usr/local/sbin/hostenv-host.real"


def main():
    args = sys.argv[1:]
    if not args or args[0] != "lock":
        os.execv(REAL, [REAL] + args)
    with open("/etc/hostile-mode") as f:
        mode = f.read().strip()
    description = subprocess.run([REAL, "describe", args[1]], capture_output=True).stdout
    out = sys.stdout.buffer
    try:
        if mode == "flood":
            out.write(b"describe 999999999\n")
            chunk = b"A" * 65536
            deadline = time.time() + 120
            while time.time() < deadline:
                out.write(chunk)
        out.write(b"describe %d\n" % len(description) + description + b"acquired\n")
        out.flush()
        if mode == "overflow":
            out.write(b"done 0 0 18446744073709551615 2\nxx")
            out.flush()
            time.sleep(120)
        elif mode == "stall":
            time.sleep(120)
        elif mode == "garbage":
            text = "\x1b[1A\rhost 127.77.0.9: deployed \u202e\ufffe".encode()
            out.write(b"done 0 1 0 %d\n" % len(text) + text)
            out.flush()
            time.sleep(120)
    except (BrokenPipeError, OSError):
        pass


if __name__ == "__main__":
    main()
