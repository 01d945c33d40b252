"""Runs one local job to its end and records how it ended (the `local` target starts it detached).

    python -m cluster.local_runner STATE.json -- python -m torch.distributed.run ... train ...

STATE.json: {"pid", "state": RUNNING|COMPLETED|FAILED|CANCELLED, "exit_code", "started", "ended"}.
SIGTERM (`nodd jobs cancel`) reaches the whole process group: the trainers checkpoint and stop,
this runner waits for them and records CANCELLED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.files import write_text_atomic  # standard library only, like this runner


def write_state(path: Path, **state) -> None:
    write_text_atomic(path, json.dumps(state))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m cluster.local_runner STATE.json -- COMMAND ...", file=sys.stderr)
        return 2
    state_path, command = Path(argv[0]), argv[2:]
    cancelled = []
    signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
    started = time.time()
    child = subprocess.Popen(command)
    write_state(state_path, pid=os.getpid(), child=child.pid, state="RUNNING", started=started)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    state = "CANCELLED" if cancelled else ("COMPLETED" if code == 0 else "FAILED")
    write_state(state_path, pid=os.getpid(), child=child.pid, state=state, exit_code=code, started=started,
                ended=time.time())
    print(f"nodd: local job ended: {state} (exit code {code})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
