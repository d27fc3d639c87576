"""`chaperone --serve`, driven by PyPI procstar 1.1.0's HTTP client and httpx."""

import asyncio
import json
import os
import random
import socket
import subprocess
import time

import httpx
import pytest

from procstar.http.client import AsyncClient

MEMORY = {"capture": {"mode": "memory", "encoding": "utf-8"}}
RAW_TEMPFILE = {"capture": {"mode": "tempfile", "encoding": None, "attached": False}}


class Spec:
    """What the client's start_proc takes: something with to_jso()."""

    def __init__(self, jso):
        self.jso = jso

    def to_jso(self):
        return self.jso


def free_port():
    """A port free now, below the ephemeral range (32768 up): a port bind(0)
    handed out and let go can be taken meanwhile as some connection's source
    port (tests/util/mod.rs's free_port says how that failed a Rust test)."""
    last = None
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError as e:
                last = e
    raise RuntimeError(f"no free port in 20000-31999: {last}")


class Served:
    def __init__(self, exe, *args, env=None):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--serve", "--serve-port", str(self.port), *args],
            env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read()
                assert time.monotonic() < deadline, "server never listened"
                time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def served(chaperone):
    s = Served(chaperone)
    yield s
    s.close()


async def wait_done(client, proc_id, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        res = await client.get_proc(proc_id)
        if res["state"] != "running":
            return res
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_procstar_client_runs_reads_signals_deletes(served):
    async with httpx.AsyncClient() as http:
        client = AsyncClient(("127.0.0.1", served.port), http)
        pid = await client.start_proc(Spec({
            "argv": ["/bin/echo", "Hello, world."], "fds": [["stdout", MEMORY]]}))
        res = await wait_done(client, pid)
        assert res["status"]["exit_code"] == 0
        assert res["fds"]["stdout"] == {
            "type": "text", "text": "Hello, world.\n", "encoding": "utf-8"}
        assert pid in await client.get_procs()
        assert await client.get_output_data(pid, "stdout") == "Hello, world.\n"

        sleeper = await client.start_proc(Spec({"argv": ["/bin/sleep", "100"]}))
        rsp = await http.delete(f"{served.url}/procs/{sleeper}")
        assert rsp.status_code == 400
        assert rsp.json() == {"errors": {"status": "400 Bad Request",
                                         "detail": f"process running: {sleeper}"}}
        await client.send_signal(sleeper, "SIGTERM")
        res = await wait_done(client, sleeper)
        assert res["status"]["signal"] == "SIGTERM"
        rsp = await http.post(f"{served.url}/procs/{sleeper}/signals/15")
        assert rsp.status_code == 400
        assert rsp.json()["errors"]["detail"] == "no process"
        await client.delete_proc(sleeper)
        rsp = await http.get(f"{served.url}/procs/{sleeper}")
        assert rsp.status_code == 404
        assert rsp.json()["errors"]["status"] == "404 Not Found"


@pytest.mark.asyncio
async def test_bad_requests_get_4xx_naming_what_was_wrong(served):
    u = served.url
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{u}/procs", content=b'{"specs": {}}',
                            headers={"content-type": "text/plain"})
        assert (r.status_code, r.json()["errors"]["detail"]) == (400, "body not JSON")
        r = await http.post(f"{u}/procs", content=b'{"specs":',
                            headers={"content-type": "application/json"})
        assert r.status_code == 400 and "EOF" in r.json()["errors"]["detail"]
        r = await http.post(f"{u}/procs", json={"specs": {"x": {"argv": []}}})
        assert r.status_code == 400 and "argv is empty" in r.json()["errors"]["detail"]
        r = await http.post(f"{u}/procs", json={"specs": {"d": {"argv": ["/bin/true"]}}})
        assert r.status_code == 200 and r.json() == {"data": {}}
        r = await http.post(f"{u}/procs", json={"specs": {"d": {"argv": ["/bin/true"]}}})
        assert r.status_code == 400
        assert r.json()["errors"]["detail"] == "duplicate proc id: d"
        r = await http.post(f"{u}/procs/d/signals/SIGBOGUS")
        assert r.status_code == 400 and "SIGBOGUS" in r.json()["errors"]["detail"]
        r = await http.get(f"{u}/procs/d/output/stdout/data")
        assert (r.status_code, r.json()["errors"]["detail"]) == (400, "no fd: 1")
        r = await http.get(f"{u}/nope")
        assert r.status_code == 404
        r = await http.put(f"{u}/procs")
        assert r.status_code == 405
        assert r.json()["errors"]["status"] == "405 Method Not Allowed"
        r = await http.get(f"{u}/procs/d/output/stdout/data", headers={"range": "bytes=5-1"})
        assert r.status_code == 400
        # What the framework refuses itself is in the same JSON shape.
        # (A body one byte past the 64 MiB limit, over a raw connection: an
        # HTTP client that sends more than the server reads may see the
        # connection reset before the answer.)
        size = (64 << 20) + 1
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"POST /procs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % size)
        writer.write(b" " * size)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 20)
        writer.close()
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"content-type: application/json" in head.lower(), head
        err = json.loads(body)["errors"]
        assert err["status"] == "413 Payload Too Large" and "length limit" in err["detail"], err
        r = await http.get(f"{u}/procs/%FF")
        assert r.status_code == 400 and "UTF-8" in r.json()["errors"]["detail"]


@pytest.mark.asyncio
async def test_output_ranges_by_query_and_header(served):
    u = served.url
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{u}/procs", json={"specs": {"p": {
            "argv": ["/bin/sh", "-c", "printf 0123456789"],
            "fds": [["stdout", RAW_TEMPFILE]]}}})
        assert r.status_code == 200
        client = AsyncClient(("127.0.0.1", served.port), http)
        await wait_done(client, "p")
        get = lambda q="", **h: http.get(f"{u}/procs/p/output/stdout/data{q}", headers=h)
        r = await get()
        assert (r.status_code, r.content) == (200, b"0123456789")
        assert r.headers["content-type"] == "application/octet-stream"
        r = await get("?start=3&stop=6")
        assert (r.status_code, r.content) == (200, b"345")
        r = await get("?start=8&stop=100")
        assert r.content == b"89"
        r = await get("?start=50")
        assert (r.status_code, r.content) == (200, b"")
        r = await get(range="bytes=2-4")
        assert (r.status_code, r.content) == (206, b"234")
        assert r.headers["content-range"] == "bytes 2-4/10"
        r = await get(range="bytes=7-")
        assert (r.status_code, r.content) == (206, b"789")
        r = await get(range="bytes=-4")
        assert (r.status_code, r.content) == (206, b"6789")
        assert r.headers["content-range"] == "bytes 6-9/10"
        r = await get(range="bytes=20-")
        assert r.status_code == 416
        assert r.headers["content-range"] == "bytes */10"
        # A last byte past any u64 is clamped, as HTTP says; -0 selects nothing.
        r = await get(range="bytes=8-99999999999999999999999")
        assert (r.status_code, r.content) == (206, b"89")
        assert r.headers["content-range"] == "bytes 8-9/10"
        r = await get(range="bytes=-0")
        assert r.status_code == 416
        # A Range with follow= has no Content-Range to give: refused, named.
        r = await get("?follow=true", range="bytes=6-")
        assert r.status_code == 400 and "follow" in r.json()["errors"]["detail"]
        # An empty capture is whole as an empty 200, never a 206 "bytes */0".
        await http.post(f"{u}/procs", json={"specs": {"e": {
            "argv": ["/bin/true"], "fds": [["stdout", RAW_TEMPFILE]]}}})
        await wait_done(client, "e")
        for rng in ["bytes=0-", "bytes=-5", "bytes=0-3"]:
            r = await http.get(f"{u}/procs/e/output/stdout/data", headers={"range": rng})
            assert (r.status_code, r.content) == (200, b""), rng
            assert "content-range" not in r.headers, rng


@pytest.mark.asyncio
async def test_dropped_middle_is_named_not_served(served):
    u = served.url
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{u}/procs", json={"specs": {"h": {
            "argv": ["/bin/sh", "-c", "printf 0123456789"],
            "fds": [["stdout", {"capture": {"mode": "memory", "head": 3, "tail": 2}}]]}}})
        assert r.status_code == 200
        await wait_done(AsyncClient(("127.0.0.1", served.port), http), "h")
        r = await http.get(f"{u}/procs/h/output/stdout/data")
        assert r.content == b"01289"
        assert r.headers["x-chaperone-dropped"] == "3-8"
        r = await http.get(f"{u}/procs/h/output/stdout/data?start=1&stop=4")
        assert r.content == b"12"
        assert r.headers["x-chaperone-dropped"] == "3-4"


@pytest.mark.asyncio
async def test_64mib_read_back_exactly_in_chunks(served):
    size = 64 << 20
    async with httpx.AsyncClient(timeout=60) as http:
        client = AsyncClient(("127.0.0.1", served.port), http)
        await http.post(f"{served.url}/procs", json={"specs": {"big": {
            "argv": ["/bin/sh", "-c", f"yes 0123456789abcde | head -c {size}"],
            "fds": [["stdout", RAW_TEMPFILE]]}}})
        res = await wait_done(client, "big", 60)
        assert res["fds"]["stdout"]["length"] == size
        # The client decodes the body as text (httpx always has an encoding).
        whole = await client.get_output_data("big", "stdout")
        want = (b"0123456789abcde\n" * (size // 16))
        assert whole == want.decode()
        got = b""
        step = 5 << 20
        while len(got) < size:
            r = await http.get(f"{served.url}/procs/big/output/stdout/data"
                               f"?start={len(got)}&stop={len(got) + step}")
            got += r.content
        assert got == want


@pytest.mark.asyncio
async def test_token_is_required_when_set(chaperone):
    s = Served(chaperone, env={"CHAPERONE_SERVE_TOKEN": "s3cret"})
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{s.url}/procs")
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == "Bearer"
            r = await http.get(f"{s.url}/procs", headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await http.get(f"{s.url}/procs", headers={"authorization": "Bearer s3cret"})
            assert r.status_code == 200 and r.json() == {"data": {"procs": {}}}
    finally:
        s.close()


def test_non_loopback_needs_a_token_or_insecure(chaperone):
    p = subprocess.run([chaperone, "--serve", "--serve-host", "0.0.0.0",
                        "--serve-port", str(free_port())],
                       capture_output=True, timeout=20)
    assert p.returncode == 2
    assert b"--serve-token" in p.stderr


@pytest.mark.asyncio
async def test_agent_description_and_shutdown(served):
    u = served.url
    async with httpx.AsyncClient() as http:
        await http.post(f"{u}/procs", json={"specs": {"s": {"argv": ["/bin/sleep", "100"]}}})
        r = await http.get(f"{u}/agent")
        a = r.json()["data"]["agent"]
        assert a["proc"]["pid"] == served.proc.pid
        assert a["shutdown_state"] == "active"
        assert a["procs"] == {"total": 1, "running": 1, "states": {"running": 1}}
        assert a["tls"] is False and a["connection"] is None
        assert a["uptime"] > 0
        r = await http.post(f"{u}/shutdown?policy=later")
        assert r.status_code == 400 and "terminate, kill or idle" in r.json()["errors"]["detail"]
        r = await http.post(f"{u}/shutdown?policy=kill")
        assert r.json()["data"]["shutdown_state"] in ("idling", "done")
        client = AsyncClient(("127.0.0.1", served.port), http)
        res = await wait_done(client, "s")
        assert res["status"]["signal"] == "SIGKILL"
        # Done, and after the deletion grace (nobody deletes), it exits 0.
        assert await asyncio.get_running_loop().run_in_executor(
            None, lambda: served.proc.wait(20)) == 0
