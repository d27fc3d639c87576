#!/usr/bin/env python3
"""Drives `chaperone --stdio` with the standard library only.

Starts two processes, waits for each to end, reads one's output, deletes both,
then closes stdin so the agent shuts down. Run from the repository root:

    cargo build && python3 examples/stdio_client.py target/debug/chaperone
"""

import json
import subprocess
import sys

exe = sys.argv[1] if len(sys.argv) > 1 else "chaperone"
agent = subprocess.Popen(
    [exe, "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def send(msg):
    agent.stdin.write(json.dumps(msg) + "\n")
    agent.stdin.flush()


def receive():
    line = agent.stdout.readline()
    if not line:
        raise SystemExit("agent closed its output")
    return json.loads(line)


send({"type": "ProcStartRequest", "specs": {
    "hello": {"argv": ["/bin/echo", "hello, stdio"],
              "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]},
    "fail": {"argv": ["/bin/sh", "-c", "exit 3"]},
}})

ended = {}
while len(ended) < 2:
    msg = receive()
    if msg["type"] == "ProcResult" and msg["res"]["state"] != "running":
        ended[msg["proc_id"]] = msg["res"]
    elif msg["type"] == "RequestError":
        raise SystemExit(f"request failed: {msg['err']}")

print("hello exit code:", ended["hello"]["status"]["exit_code"])
print("fail exit code:", ended["fail"]["status"]["exit_code"])

send({"type": "ProcFdDataRequest", "proc_id": "hello", "fd": "stdout", "start": 0, "stop": None})
while (msg := receive())["type"] != "ProcFdData":
    pass
print("hello stdout:", repr(msg["data"]), f"bytes [{msg['start']}, {msg['stop']})")

for proc_id in ended:
    send({"type": "ProcDeleteRequest", "proc_id": proc_id})
deleted = set()
while len(deleted) < 2:
    msg = receive()
    if msg["type"] == "ProcDelete":
        deleted.add(msg["proc_id"])

agent.stdin.close()
while (msg := receive()) != {"type": "ShutDown", "shutdown_state": "done"}:
    pass
print("agent exited:", agent.wait())
