"""Output beyond Procstar: encodings, long-poll and follow, TLS, and
`chaperone client`, against a running `chaperone --serve`."""

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import time

import httpx
import pytest

from procstar.http.client import AsyncClient
from test_http import Served, free_port, wait_done

MEMORY = {"capture": {"mode": "memory", "encoding": "utf-8"}}
RAW = {"capture": {"mode": "memory", "encoding": None}}


@pytest.fixture
def served(chaperone):
    s = Served(chaperone)
    yield s
    s.close()


async def start(http, url, specs):
    r = await http.post(f"{url}/procs", json={"specs": specs})
    assert r.status_code == 200, r.text


def zstd_d(data):
    """Decompresses with the zstd command (ci/test installs it)."""
    assert shutil.which("zstd"), "the zstd command is required (ci/test installs it)"
    return subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                          check=True).stdout


@pytest.mark.asyncio
async def test_each_encoding(served):
    u = served.url
    raw = bytes(range(256)) * 40 + b"caf\xc3\xa9 \xff end"
    async with httpx.AsyncClient() as http:
        # A process that writes `raw` exactly: printf of octal escapes.
        esc = "".join(f"\\{c:03o}" for c in raw)
        await start(http, u, {"r": {"argv": ["/usr/bin/printf", esc], "fds": [["stdout", RAW]]},
                              "z": {"argv": ["/bin/sh", "-c", "seq 200000"], "fds": [["stdout", {
                                  "capture": {"mode": "memory", "encoding": "utf-8",
                                              "compress": "zstd"}}]]}})
        client = AsyncClient(("127.0.0.1", served.port), http)
        await wait_done(client, "r")
        await wait_done(client, "z")
        get = lambda p, q="", **h: http.get(f"{u}/procs/{p}/output/stdout/data{q}", headers=h)
        r = await get("r")
        assert r.content == raw and r.headers["content-type"] == "application/octet-stream"
        assert r.headers["x-chaperone-length"] == str(len(raw))
        assert r.headers["x-chaperone-open"] == "false"
        r = await get("r", "?encoding=utf-8")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.content.decode() == raw.decode("utf-8", "replace")
        assert r.headers["x-chaperone-replaced"] == "true"
        r = await get("r", f"?encoding=utf-8&start={len(raw) - 11}&stop={len(raw) - 4}")
        assert r.content == "caf\u00e9 \ufffd".encode()
        # Cut inside the two-byte é: the lone first byte is replaced.
        r = await get("r", f"?encoding=utf-8&start={len(raw) - 11}&stop={len(raw) - 7}")
        assert (r.content, r.headers["x-chaperone-replaced"]) == ("caf\ufffd".encode(), "true")
        r = await get("z", "?encoding=utf-8")
        assert r.headers["x-chaperone-replaced"] == "false"
        r = await get("r", "?encoding=base64&start=5&stop=1000")
        assert base64.b64decode(r.content) == raw[5:1000]
        assert int(r.headers["content-length"]) == len(r.content)
        r = await get("r", "?encoding=base2048")
        # 11 bits a character: ceil(bits / 11) characters.
        assert len(r.content.decode()) == -(-len(raw) * 8 // 11)
        r = await get("r", "?encoding=rot13")
        assert r.status_code == 400 and "rot13" in r.json()["errors"]["detail"]
        want = b"".join(b"%d\n" % i for i in range(1, 200001))
        # The stored frames of a capture held compressed...
        r = await get("z", "?encoding=zstd")
        assert r.headers["content-type"] == "application/zstd"
        assert zstd_d(r.content) == want
        res = (await client.get_proc("z"))["fds"]["stdout"]["compression"]
        assert int(r.headers["content-length"]) == res["compressed_length"]
        # ...a range of one, compressed as served...
        r = await get("z", "?encoding=zstd&start=1000&stop=300000")
        assert zstd_d(r.content) == want[1000:300000]
        # ...an uncompressed capture...
        r = await get("r", "?encoding=zstd")
        assert zstd_d(r.content) == raw
        # ...and Accept-Encoding, which httpx decodes only if it knows zstd.
        r = await http.get(f"{u}/procs/r/output/stdout/data",
                           headers={"accept-encoding": "zstd"})
        assert r.headers["content-encoding"] == "zstd"
        assert r.headers["content-type"] == "application/octet-stream"
        # With a Range, the identity bytes.
        r = await http.get(f"{u}/procs/r/output/stdout/data",
                           headers={"accept-encoding": "zstd", "range": "bytes=0-9"})
        assert "content-encoding" not in r.headers and r.content == raw[:10]


@pytest.mark.asyncio
async def test_long_poll_waits_for_the_next_bytes(served, tmp_path):
    u = served.url
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    async with httpx.AsyncClient(timeout=60) as http:
        await start(http, u, {"p": {
            "argv": ["/bin/sh", "-c", f"printf first; read x < {fifo}; printf second; sleep 100"],
            "fds": [["stdout", MEMORY]]}})
        get = lambda q: http.get(f"{u}/procs/p/output/stdout/data{q}")
        while (await get("")).content != b"first":
            await asyncio.sleep(0.01)
        # Nothing new within the wait: an empty answer, still open.
        r = await get("?start=5&wait=0.2")
        assert (r.content, r.headers["x-chaperone-open"]) == (b"", "true")
        # A waiting request is answered by the bytes as they come.
        waiting = asyncio.ensure_future(get("?start=5&wait=60"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await asyncio.get_running_loop().run_in_executor(None, fifo.write_text, "go\n")
        r = await waiting
        assert r.content == b"second"
        assert r.headers["x-chaperone-length"] == "11"
        await http.post(f"{u}/procs/p/signals/KILL")
        # Once it has ended, a wait past the end answers at once, closed.
        r = await get("?start=11&wait=60")
        assert (r.content, r.headers["x-chaperone-open"]) == (b"", "false")
        r = await http.get(f"{u}/procs/p?wait=60")
        assert r.json()["data"]["procs"]["p"]["status"]["signal"] == "SIGKILL"


WRITER = ("i=0; while [ $i -lt 300 ]; do printf 'line %d %s\\n' $i "
          "$(head -c $((i % 50)) /dev/zero | tr '\\0' x); i=$((i+1)); "
          "[ $((i % 30)) = 0 ] && sleep 0.05; done")


def written():
    return b"".join(b"line %d %s\n" % (i, b"x" * (i % 50)) for i in range(300))


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["memory", "tempfile", "file"])
async def test_follow_streams_a_live_capture_exactly(served, tmp_path, mode):
    u = served.url
    cap = {"capture": {"mode": mode, "encoding": "utf-8"}}
    if mode == "file":
        cap["capture"]["path"] = str(tmp_path / "kept.out")
    async with httpx.AsyncClient(timeout=60) as http:
        await start(http, u, {"w": {"argv": ["/bin/sh", "-c", "sleep 0.2; " + WRITER],
                                    "fds": [["stdout", cap]]}})
        got = b""
        async with http.stream("GET", f"{u}/procs/w/output/stdout/data?follow=true") as r:
            assert r.status_code == 200
            async for b in r.aiter_bytes():
                got += b
        assert got == written()
        # From an offset, and bounded by stop.
        r = await http.get(f"{u}/procs/w/output/stdout/data?follow=true&start=7&stop=20")
        assert r.content == written()[7:20]


def client(chaperone, url, *args, token=None, ca=None, stdin=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHAPERONE_URL", "CHAPERONE_SERVE_TOKEN", "CHAPERONE_CA")}
    env["CHAPERONE_URL"] = url
    if token:
        env["CHAPERONE_SERVE_TOKEN"] = token
    if ca:
        env["CHAPERONE_CA"] = str(ca)
    return subprocess.run([chaperone, "client", *args], env=env, capture_output=True,
                          input=stdin, timeout=120)


def test_client_commands_and_exit_codes(chaperone, served, tmp_path):
    u = served.url
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"specs": {
        "a": {"argv": ["/bin/sh", "-c", "sleep 0.3; " + WRITER], "fds": [["stdout", MEMORY]]},
        "f": {"argv": ["/bin/false"]}}}))
    p = client(chaperone, u, "start", str(spec))
    assert p.returncode == 0 and p.stdout == b"started a\nstarted f\n", p
    # Follow from the start, while it writes: exact.
    p = client(chaperone, u, "output", "a", "--follow")
    assert p.returncode == 0 and p.stdout == written(), p.stderr
    p = client(chaperone, u, "wait", "a")
    assert p.returncode == 0 and b"a: terminated" in p.stdout
    p = client(chaperone, u, "wait", "f")
    assert p.returncode == 9 and b"f ended: exit 1" in p.stderr
    p = client(chaperone, u, "list")
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "STATE", "PID", "EXIT", "ELAPSED", "OUTPUT"]
    assert lines[1].split()[:2] == ["a", "terminated"] and lines[2].split()[3] == "1"
    p = client(chaperone, u, "--json", "show", "a")
    assert json.loads(p.stdout)["status"]["exit_code"] == 0
    p = client(chaperone, u, "output", "a", "--start", "5", "--stop", "30")
    assert p.stdout == written()[5:30]
    p = client(chaperone, u, "output", "a", "--tail", "12")
    assert p.stdout == written()[-12:]
    p = client(chaperone, u, "output", "a", "--encoding", "base64")
    assert base64.b64decode(p.stdout) == written()
    p = client(chaperone, u, "show", "nope")
    assert p.returncode == 4 and b"unknown proc id: nope" in p.stderr
    p = client(chaperone, u, "signal", "a", "TERM")
    assert p.returncode == 5 and b"no process" in p.stderr
    p = client(chaperone, u, "start", "-", stdin=b'{"specs": {"x": {"argv": []}}}')
    assert p.returncode == 5 and b"argv" in p.stderr
    p = client(chaperone, u, "delete", "a")
    assert p.returncode == 0 and p.stdout == b"deleted a\n"
    p = client(chaperone, f"http://127.0.0.1:{free_port()}", "list")
    assert p.returncode == 3 and b"cannot reach" in p.stderr
    p = client(chaperone, u, "wait", "never", "--timeout", "0.1")
    assert p.returncode == 4
    p = client(chaperone, "ftp://x", "list")
    assert p.returncode == 2 and b"http://" in p.stderr
    p = client(chaperone, u, "shutdown", "--policy", "kill")
    assert p.returncode == 0 and b"shutdown state:" in p.stdout


def test_client_reads_64mib_exactly(chaperone, served):
    size = 64 << 20
    spec = ('{"specs": {"big": {"argv": ["/bin/sh", "-c", "yes 0123456789abcde | head -c %d"],'
            ' "fds": [["stdout", {"capture": {"mode": "tempfile", "encoding": null,'
            ' "attached": false}}]]}}}' % size).encode()
    assert client(chaperone, served.url, "start", "-", stdin=spec).returncode == 0
    assert client(chaperone, served.url, "wait", "big").returncode == 0
    want = b"0123456789abcde\n" * (size // 16)
    p = client(chaperone, served.url, "output", "big")
    assert hashlib.sha256(p.stdout).digest() == hashlib.sha256(want).digest()
    # In 7 MiB chunks.
    got = bytearray()
    while len(got) < size:
        p = client(chaperone, served.url, "output", "big", "--start", str(len(got)),
                   "--stop", str(len(got) + (7 << 20)))
        assert p.returncode == 0 and p.stdout
        got += p.stdout
    assert got == want


def make_cert(tmp_path):
    """A test CA and a certificate for localhost it signed: (ca, cert, key)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: cannot make a test certificate")
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    cert, key, csr = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "cert.csr"
    ext = tmp_path / "ext.cnf"
    ext.write_text("basicConstraints=critical,CA:FALSE\n"
                   "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1",
        "-subj", "/CN=chaperone test CA")
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext)
    return ca, cert, key


@pytest.mark.asyncio
async def test_tls_with_a_generated_certificate_and_a_token(chaperone, tmp_path):
    ca, cert, key = make_cert(tmp_path)
    s = Served(chaperone, "--serve-cert", str(cert), "--serve-key", str(key),
               "--serve-token", "t0k")
    try:
        url = f"https://localhost:{s.port}"
        auth = {"authorization": "Bearer t0k"}
        import ssl
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as http:
            r = await http.get(f"{url}/agent", headers=auth)
            assert r.status_code == 200 and r.json()["data"]["agent"]["tls"] is True
            r = await http.get(f"{url}/procs")
            assert r.status_code == 401
            await http.post(f"{url}/procs", headers=auth, json={"specs": {"e": {
                "argv": ["/bin/echo", "over tls"], "fds": [["stdout", MEMORY]]}}})
        # Plain HTTP on the TLS port is not served.
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient() as http:
                await http.get(f"http://localhost:{s.port}/procs")
        # An untrusted certificate is refused by a verifying client.
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as http:
                await http.get(f"{url}/procs")
        p = client(chaperone, url, "wait", "e", token="t0k", ca=ca)
        assert p.returncode == 0, p.stderr
        p = client(chaperone, url, "output", "e", token="t0k", ca=ca)
        assert p.stdout == b"over tls\n"
        p = client(chaperone, url, "list", token="wrong", ca=ca)
        assert p.returncode == 6 and b"401" in p.stderr
        p = client(chaperone, url, "list", token="t0k")
        assert p.returncode == 3, "the test certificate is not in the system roots"
    finally:
        s.close()


def test_bad_tls_files_are_named(chaperone, tmp_path):
    _, cert, key = make_cert(tmp_path)
    for args, want in [(["--serve-cert", str(tmp_path / "none.pem"), "--serve-key", str(key)],
                        b"none.pem"),
                       (["--serve-cert", str(key), "--serve-key", str(key)],
                        b"no certificate"),
                       (["--serve-cert", str(cert), "--serve-key", str(cert)],
                        b"--serve-key")]:
        p = subprocess.run([chaperone, "--serve", "--serve-port", str(free_port()), *args],
                           capture_output=True, timeout=20)
        assert p.returncode == 2 and want in p.stderr, (args, p.stderr)


def test_client_wait_polls_gently_an_agent_that_does_not_long_poll(chaperone):
    """Procstar ignores `?wait=` and answers at once: `client wait` then
    backs off between asks instead of asking as fast as it is answered."""
    import http.server
    import json as _json
    import threading

    asked = []

    class Running(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            body = _json.dumps({"data": {"procs": {"x": {
                "state": "running", "times": {"stop": None}}}}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Running)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        r = subprocess.run([chaperone, "client", "--url", url, "wait", "x", "--timeout", "3"],
                           capture_output=True, timeout=30)
        assert r.returncode == 8, r.stderr
        # 50 ms doubling to 2 s: about six asks in 3 s (thousands before).
        assert 2 <= len(asked) <= 12, len(asked)
        assert all("wait=" in p for p in asked)
    finally:
        server.shutdown()
