"""chaperone as a Procstar agent, driven by PyPI procstar 1.1.0's real
WebSocket server (procstar.agent.server.Server) through its test Assembly."""

import asyncio
import base64
import os
import signal
import time
import uuid

import pytest

import procstar.agent.server

from procstar import proto
from procstar.agent.exc import NoOpenConnectionInGroup
from procstar.agent.proc import AgentMessageError, FdData, Result
from procstar.testing.agent import Assembly, ProcstarError

# Reconnect fast and keep trying: Assembly passes --connect-count-max 1 first,
# and a later flag overrides it.
PATIENT = [
    "--connect-count-max", "1000",
    "--connect-interval-start", "0.1",
    "--connect-interval-max", "0.5",
]

MEMORY = {"capture": {"mode": "memory", "encoding": "utf-8"}}
TEMPFILE = {"capture": {"mode": "tempfile", "encoding": "utf-8", "attached": False}}


def new_id():
    return str(uuid.uuid4())


async def update(proc, kind, timeout=20):
    """The next update of type `kind` (others are skipped); a RequestError
    raises AgentMessageError.

    Reads the process's message queue directly: `Process.updates` is a single
    generator that ends at the first error, and these tests go on after one.
    """
    queue = proc._Process__msgs

    async def next_of_kind():
        while True:
            msg = await queue.get()
            match msg:
                case proto.ProcResult(_, res):
                    u = Result(res)
                case proto.ProcFdData(_, fd, start, stop, encoding, data):
                    u = FdData(fd=fd, interval=proto_interval(start, stop),
                               encoding=encoding, data=data)
                case proto.RequestError(m, err):
                    raise AgentMessageError(m, err)
                case _:
                    u = msg
            if isinstance(u, kind):
                return u
    return await asyncio.wait_for(next_of_kind(), timeout)


async def final(proc, timeout=20):
    """The first result that is not running."""
    while True:
        res = await update(proc, Result, timeout)
        if res.state != "running":
            return res


async def fetch(proc, fd, start=0, stop=None, timeout=20):
    await proc.request_fd_data(fd, interval=proto_interval(start, stop))
    return await update(proc, FdData, timeout)


def proto_interval(start, stop):
    from procstar.lib.py import Interval
    return Interval(start, stop)


def only_conn(asm):
    (conn,) = asm.server.connections.values()
    return conn


def capture_messages(asm):
    """Records every message the server receives."""
    seen = []
    orig = asm.server.processes.on_message

    def on_message(conn, msg):
        seen.append(msg)
        return orig(conn, msg)

    asm.server.processes.on_message = on_message
    return seen


async def until(pred, timeout=20, step=0.05):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


@pytest.mark.asyncio
async def test_every_fd_kind_starts_and_reports(tmp_path):
    out_file = tmp_path / "out.txt"
    async with Assembly.start() as asm:
        res = await asm.run({
            "argv": ["/bin/sh", "-c", "echo out; echo err >&2; echo file >&3; cat"],
            "fds": [
                ["stdin", {"null": {}}],
                ["stdout", MEMORY],
                ["stderr", {"capture": {"mode": "tempfile", "encoding": None}}],
                ["3", {"file": {"path": str(out_file), "flags": "Write"}}],
            ],
        })
        assert res.state == "terminated", res
        assert res.status.exit_code == 0
        assert res.fds.stdout.text == "out\n"
        assert base64.b64decode(res.fds.stderr.data) == b"err\n"
        assert out_file.read_text() == "file\n"
        # dup: stderr into the stdout capture, in program order.
        res = await asm.run({
            "argv": ["/bin/sh", "-c", "echo a; echo b >&2; echo c"],
            "fds": [["stdout", MEMORY], ["stderr", {"dup": {"fd": 1}}]],
        })
        assert res.fds.stdout.text == "a\nb\nc\n"
        assert res.fds.stderr is None
        # fds as an object, applied in the order written, through the socket.
        res = await asm.run({
            "argv": ["/bin/sh", "-c", "echo a; echo b >&2"],
            "fds": {"stdout": MEMORY, "stderr": {"dup": {"fd": 1}}},
        })
        assert res.fds.stdout.text == "a\nb\n"
        # env is in a result only when asked for.
        assert "env" not in res.__dict__
        res = await asm.run({"argv": ["/bin/true"], "env": {"vars": {"X": "1"}, "report": True}})
        assert res.env.X == "1"
        # A bad exe is an error result, not a failed request.
        res = await asm.run({"argv": ["/nonexistent/prog"]})
        assert res.state == "error"
        assert any("No such file or directory" in e for e in res.errors), res.errors


@pytest.mark.asyncio
async def test_incremental_output_concatenates_exactly():
    async with Assembly.start() as asm:
        proc, res = await asm.server.start(new_id(), {
            "argv": ["/bin/sh", "-c",
                     "for i in $(seq 1 40); do echo line $i; sleep 0.02; done"],
            "fds": [["stdout", TEMPFILE], ["stderr", {"dup": {"fd": 1}}]],
        })
        assert res.state == "running"
        assert res.fds.stdout.type == "detached"
        got = b""
        chunks = 0
        while True:
            d = await fetch(proc, "stdout", len(got))
            assert d.interval.start == len(got)
            assert d.interval.stop - d.interval.start == len(d.data)
            got += d.data
            chunks += d.data != b""
            await proc.request_result()
            res = await update(proc, Result)
            if res.state != "running" and res.fds.stdout.length == len(got):
                break
            await asyncio.sleep(0.05)
        assert got == b"".join(b"line %d\n" % i for i in range(1, 41))
        assert chunks > 1, "output came in more than one piece"
        # Past the end: clamped, empty; start past stop: an error naming the fd.
        d = await fetch(proc, "stdout", len(got) + 100, len(got) + 200)
        assert d.data == b""
        await proc.request_fd_data("stdout", interval=proto_interval(10, 5))
        with pytest.raises(AgentMessageError, match="stdout"):
            await update(proc, FdData)


@pytest.mark.asyncio
async def test_output_larger_than_a_frame_arrives_whole():
    # Over 1 MiB, a reply goes as a fragmented message; the server
    # reassembles it.
    async with Assembly.start() as asm:
        proc, res = await asm.server.start(new_id(), {
            "argv": ["/usr/bin/seq", "1", "700000"], "fds": [["stdout", TEMPFILE]]})
        await final(proc)
        d = await fetch(proc, "stdout", 0)
        want = b"".join(b"%d\n" % i for i in range(1, 700001))
        assert len(want) > 4 << 20
        assert d.data == want


def mixed_bytes(n):
    """Text with 2-, 3- and 4-byte characters and bytes that are not UTF-8,
    so that no piece boundary falls between characters by luck."""
    import random
    rnd = random.Random(7)
    parts = ["é".encode(), "€".encode(), "😀".encode(), b"\xff", b'"\\\n', b"abc"]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(parts)
    return bytes(out[:n])


@pytest.mark.asyncio
async def test_a_large_range_is_read_as_sent_and_arrives_exact(tmp_path):
    # A range of a file-held capture longer than a piece (4 MiB) is read and
    # sent a piece at a time, as one message whose frames continue it.
    want = mixed_bytes(13 * 1024 * 1024 + 7)
    src = tmp_path / "src"
    src.write_bytes(want)
    async with Assembly.start() as asm:
        proc, _ = await asm.server.start(new_id(), {
            "argv": ["/bin/cat", str(src)], "fds": [["stdout", TEMPFILE]]})
        await final(proc)
        for start, stop in [(0, None), (4194303, 12000001), (1, len(want) + 99)]:
            d = await fetch(proc, "stdout", start, stop, timeout=60)
            end = len(want) if stop is None else min(stop, len(want))
            assert (d.interval.start, d.interval.stop) == (start, end)
            assert d.data == want[start:end], (start, stop)
        # The connection carried on.
        d = await fetch(proc, "stdout", 5, 9)
        assert d.data == want[5:9]


@pytest.mark.asyncio
async def test_fetching_a_large_capture_does_not_hold_it_in_memory():
    # 320 MiB: the agent held the whole reply (its bytes, once) to send it.
    size = 320 << 20
    async with Assembly.start(counts={"default": 1}) as asm:
        (agent,) = asm.conn_procs.values()
        proc, _ = await asm.server.start(new_id(), {
            "argv": ["/bin/sh", "-c", f"head -c {size} /dev/zero"],
            "fds": [["stdout", TEMPFILE]]})
        res = await final(proc, timeout=60)
        assert res.fds.stdout.length == size
        d = await fetch(proc, "stdout", 0, None, timeout=120)
        assert d.interval.stop == size and len(d.data) == size
        assert d.data.count(0) == size
        del d
        with open(f"/proc/{agent.pid}/status") as f:
            peak_kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        assert peak_kib < 150 * 1024, \
            f"the agent's peak resident set was {peak_kib >> 10} MiB for a 320 MiB capture"


@pytest.mark.asyncio
async def test_fd_data_errors_leave_the_agent_up():
    async with Assembly.start() as asm:
        proc, res = await asm.server.start(new_id(), {
            "argv": ["/bin/echo", "hi"], "fds": [["stdout", MEMORY]]})
        await final(proc)
        await proc.request_fd_data("stderr")
        with pytest.raises(AgentMessageError, match="no fd: 2"):
            await update(proc, FdData)
        # Still serving.
        res = await asm.run({"argv": ["/bin/echo", "x"], "fds": [["stdout", MEMORY]]})
        assert res.fds.stdout.text == "x\n"


@pytest.mark.asyncio
async def test_bytes_in_a_spec_read_as_text_and_a_refused_start_reaches_its_process():
    async with Assembly.start() as asm:
        # Python's msgpack writes bytes as bin; Procstar reads it as text.
        res = await asm.run({"argv": ["/bin/echo", b"from bytes"], "fds": [["stdout", MEMORY]]})
        assert res.fds.stdout.text == "from bytes\n"
        # Bytes that are not UTF-8 refuse the start. The error echoes the
        # start's type and specs, which the server routes it by: its start()
        # raises instead of waiting forever.
        with pytest.raises(AgentMessageError, match="not UTF-8"):
            await asyncio.wait_for(
                asm.server.start(new_id(), {"argv": ["/bin/echo", b"\xff"]}), 20)
        res = await asm.run({"argv": ["/bin/echo", "still up"], "fds": [["stdout", MEMORY]]})
        assert res.fds.stdout.text == "still up\n"


@pytest.mark.asyncio
async def test_signal_and_delete_with_their_errors():
    async with Assembly.start() as asm:
        proc, res = await asm.server.start(new_id(), {"argv": ["/bin/sleep", "100"]})
        assert res.state == "running"
        await proc.request_delete()
        with pytest.raises(AgentMessageError, match="process running"):
            await update(proc, Result)
        await proc.send_signal(signal.SIGTERM)
        res = await final(proc)
        assert res.status.signal == "SIGTERM"
        assert res.status.exit_code is None
        await proc.send_signal(signal.SIGTERM)
        with pytest.raises(AgentMessageError, match="no process"):
            await update(proc, Result)
        proc_id = proc.proc_id
        await asyncio.wait_for(proc.delete(), 20)
        assert proc_id not in asm.server.processes
        seen = capture_messages(asm)
        await only_conn(asm).send(proto.ProcidListRequest())
        await until(lambda: any(isinstance(m, proto.ProcidList) for m in seen))
        (lst,) = [m for m in seen if isinstance(m, proto.ProcidList)]
        assert proc_id not in lst.proc_ids


@pytest.mark.asyncio
async def test_malformed_frames_get_request_errors_and_the_connection_survives():
    async with Assembly.start() as asm:
        conn = only_conn(asm)
        seen = capture_messages(asm)
        for frame in [b"\xc1", b"\x93\x01\x02\x03",
                      b"\x81\xa4type\xa5Bogus",
                      b"\x82\xa4type\xb1ProcResultRequest\xa3foo\x01"]:
            await conn.ws.send(frame)
        await until(lambda: len([m for m in seen if isinstance(m, proto.RequestError)]) == 4)
        errs = [m.err for m in seen if isinstance(m, proto.RequestError)]
        assert "invalid MessagePack message" in errs[0]
        assert "not a map" in errs[1]
        assert "Bogus" in errs[2]
        assert "proc_id" in errs[3]
        # A text frame too.
        await conn.ws.send("hello")
        await until(lambda: len([m for m in seen if isinstance(m, proto.RequestError)]) == 5)
        assert conn.open
        res = await asm.run({"argv": ["/bin/echo", "ok"], "fds": [["stdout", MEMORY]]})
        assert res.fds.stdout.text == "ok\n"


@pytest.mark.asyncio
async def test_a_message_too_large_to_read_is_told_on_the_next_connection():
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1}, args=PATIENT)
    try:
        seen = capture_messages(asm)
        errors = lambda: [m.err for m in seen if isinstance(m, proto.RequestError)]
        # Over 16 MiB (tungstenite's default, and Procstar's limit) is read
        # and answered.
        await only_conn(asm).ws.send(b"\xc1" * (20 << 20))
        await until(lambda: len(errors()) == 1)
        assert "invalid MessagePack message" in errors()[0]
        # Over 64 MiB cannot be read: the connection ends, and the next one
        # says why.
        await only_conn(asm).ws.send(b"\xc1" * ((64 << 20) + 1))
        await until(lambda: len(errors()) == 2, timeout=30)
        assert "too large" in errors()[1] and "64 MiB" in errors()[1], errors()[1]
        res = await asm.run({"argv": ["/bin/echo", "again"], "fds": [["stdout", MEMORY]]})
        assert res.fds.stdout.text == "again\n"
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_wrong_token_never_registers_and_the_agent_gives_up_with_exit_1():
    asm = Assembly(access_token="right")
    await asm.start_server()
    try:
        t0 = time.monotonic()
        with pytest.raises(ProcstarError, match=r"failed with 1 before"):
            await asm.start_procstars(
                {"default": 1}, access_token="wrong",
                args=["--connect-count-max", "3", "--connect-interval-start", "0.2"])
        # Three attempts, two waits between them (0.2 s, then 0.4 s).
        assert time.monotonic() - t0 >= 0.6
        assert len(asm.server.connections) == 0
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_no_server_exits_1(chaperone):
    p = await asyncio.create_subprocess_exec(
        chaperone, "--agent", "--agent-host", "localhost", "--agent-port", "9",
        "--connect-count-max", "1",
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 1, err


@pytest.mark.asyncio
async def test_no_agent_host_exits_2(chaperone):
    env = {k: v for k, v in os.environ.items() if k != "PROCSTAR_AGENT_HOST"}
    p = await asyncio.create_subprocess_exec(
        chaperone, "--agent", stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 2
    assert b"no agent host" in err


@pytest.mark.asyncio
async def test_server_restart_loses_no_result():
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1}, args=PATIENT)
    try:
        for i in range(8):
            proc, res = await asm.server.start(f"r{i}", {
                "argv": ["/bin/sh", "-c", f"sleep 0.5; echo done {i}"],
                "fds": [["stdout", MEMORY]]})
            assert res.state == "running"
        await asm.stop_server()
        # They all end while no server is up. The new server knows none of
        # them, so it asks for nothing: the agent must send each termination
        # of its own accord after registering.
        await asyncio.sleep(1.5)
        asm.server = procstar.agent.server.Server()
        seen = capture_messages(asm)
        await asm.start_server()
        def ended():
            return {m.proc_id: m.res for m in seen
                    if isinstance(m, proto.ProcResult) and m.res["state"] != "running"}
        await until(lambda: len(ended()) == 8)
        for i in range(8):
            res = ended()[f"r{i}"]
            assert res["status"]["exit_code"] == 0
            assert res["fds"]["stdout"]["text"] == f"done {i}\n"
        # And the new server adopted them from Register's proc_ids.
        assert {f"r{i}" for i in range(8)} <= set(asm.server.processes)
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_many_processes_output_fetched_across_a_server_restart():
    n, size = 256, 1 << 20
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1}, args=PATIENT)
    try:
        procs = {}
        for i in range(n):
            text = f"{i:04d}\n"
            proc, _ = await asm.server.start(f"m{i}", {
                "argv": ["/bin/sh", "-c",
                         f"sleep 0.5; yes {text.strip()} | head -c {size}"],
                "fds": [["stdout", TEMPFILE]]})
            procs[i] = proc
        await asm.stop_server()
        await asyncio.sleep(1.0)
        await asm.start_server()
        for i, proc in procs.items():
            res = await final(proc, timeout=60)
            assert res.status.exit_code == 0, res
            assert res.fds.stdout.length == size
        for i, proc in procs.items():
            got = b""
            while len(got) < size:
                d = await fetch(proc, "stdout", len(got), min(len(got) + (256 << 10), size))
                assert d.interval.start == len(got)
                got += d.data
            want = (f"{i:04d}\n".encode() * (size // 5 + 1))[:size]
            assert got == want, i
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_groups_route_processes():
    async with Assembly.start(counts={"g1": 2, "g2": 2, "g3": 2}) as asm:
        async def one(i):
            group = f"g{i % 3 + 1}"
            proc, res = await asm.server.start(
                f"p{i}", {"argv": ["/bin/echo", str(i)], "fds": [["stdout", MEMORY]]},
                group_id=group)
            conn = asm.server.connections[proc.conn_id]
            assert conn.info.conn.group_id == group
            if res.state == "running":
                res = await final(proc)
            assert res.fds.stdout.text == f"{i}\n"
        await asyncio.gather(*(one(i) for i in range(64)))


async def signal_agent(asm, signum):
    (p,) = asm.conn_procs.values()
    p.send_signal(signum)
    return p


async def delete_and_see_exit_0(asm, proc, p):
    """Deletes `proc`, the agent's last one, and sees agent process `p` exit 0."""
    await asyncio.wait_for(proc.delete(), 20)
    assert await asyncio.wait_for(p.wait(), 20) == 0
    asm.conn_procs.clear()  # nothing left for aclose to kill


@pytest.mark.asyncio
@pytest.mark.parametrize("signum,want", [
    (signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGTERM"), (signal.SIGQUIT, "SIGKILL")])
async def test_shutdown_signals_end_processes_and_then_the_agent(signum, want):
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1})
    try:
        proc, res = await asm.server.start(new_id(), {"argv": ["/bin/sleep", "100"]})
        seen = capture_messages(asm)
        p = await signal_agent(asm, signum)
        res = await final(proc)
        assert res.status.signal == want
        # Done once every process is deleted; then the agent exits 0.
        await delete_and_see_exit_0(asm, proc, p)
        states = [m.shutdown_state.name for m in seen if isinstance(m, proto.ShutDown)]
        assert states[0] == "idling" and states[-1] == "done", states
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_sigusr1_idles_refuses_starts_and_exits_once_all_deleted():
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1})
    try:
        proc, _ = await asm.server.start(new_id(), {"argv": ["/bin/sleep", "1"]})
        conn = only_conn(asm)
        seen = capture_messages(asm)
        p = await signal_agent(asm, signal.SIGUSR1)
        await until(lambda: conn.shutdown_state == proto.ShutdownState.idling)
        # The server no longer picks it...
        with pytest.raises(NoOpenConnectionInGroup):
            await asm.server.start(new_id(), {"argv": ["/bin/true"]})
        # ... and a start sent anyway is refused with Procstar's error.
        await conn.send(proto.ProcStartRequest(specs={"late": {"argv": ["/bin/true"]}}))
        await until(lambda: any(isinstance(m, proto.RequestError) for m in seen))
        (err,) = [m for m in seen if isinstance(m, proto.RequestError)]
        assert err.err == "agent shutting down: idling"
        # The running one finishes naturally.
        res = await final(proc)
        assert res.status.exit_code == 0
        assert p.returncode is None
        await delete_and_see_exit_0(asm, proc, p)
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_wait_exits_once_every_process_is_deleted():
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1}, args=["--wait"])
    try:
        (p,) = asm.conn_procs.values()
        proc, res = await asm.server.start(new_id(), {"argv": ["/bin/sleep", "0.2"]})
        assert res.state == "running"
        await final(proc)
        await asyncio.sleep(0.3)
        assert p.returncode is None
        await delete_and_see_exit_0(asm, proc, p)
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_restrict_exe_is_reported_and_enforced():
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1}, args=["--restrict-exe", "/bin/echo"])
    try:
        assert only_conn(asm).info.conn.restricted_exe == "/bin/echo"
        res = await asm.run({"argv": ["/bin/echo", "ok"], "fds": [["stdout", MEMORY]]})
        assert res.fds.stdout.text == "ok\n"
        res = await asm.run({"argv": ["/bin/true"]})
        assert res.state == "error"
        assert any("restrict-exe" in e for e in res.errors), res.errors
    finally:
        await asm.aclose()


@pytest.mark.asyncio
async def test_agent_secrets_never_reach_a_child():
    async with Assembly.start() as asm:
        res = await asm.run({
            "argv": ["/usr/bin/env"], "fds": [["stdout", MEMORY]]})
        env = res.fds.stdout.text
        assert "PROCSTAR_AGENT_TOKEN" not in env
        assert "PROCSTAR_AGENT_CERT" not in env


@pytest.mark.asyncio
async def test_a_connection_lost_before_done_is_sent_still_ends_the_agent(chaperone):
    """The agent's `done` queued behind a large reply when the connection
    drops is not lost: the agent still ends (with no server to tell, at once)
    instead of registering again as `active` and running on."""
    import ssl
    import msgpack
    import websockets.asyncio.server as wsserver
    from procstar.testing import TLS_CERT_PATH, TLS_KEY_PATH

    links = []

    async def handler(ws):
        reg = msgpack.loads(await ws.recv())
        await ws.send(msgpack.dumps({"type": "Registered"}))
        incoming = asyncio.Queue()
        links.append((ws, reg, incoming))
        try:
            async for m in ws:
                await incoming.put(msgpack.loads(m))
        except Exception:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(TLS_CERT_PATH, TLS_KEY_PATH)
    server = await wsserver.serve(handler, "localhost", 0, ssl=ctx, max_size=None,
                                  ping_interval=None)
    port = server.sockets[0].getsockname()[1]
    env = dict(os.environ, PROCSTAR_AGENT_CERT=str(TLS_CERT_PATH), PROCSTAR_AGENT_TOKEN="")
    agent = await asyncio.create_subprocess_exec(
        chaperone, "--agent", "--agent-host", "localhost", "--agent-port", str(port),
        *PATIENT, env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        await until(lambda: links)
        ws, reg, incoming = links[0]
        assert reg["shutdown_state"] == "active"
        await ws.send(msgpack.dumps({"type": "ProcStartRequest", "specs": {"big": {
            "argv": ["/bin/sh", "-c", "head -c 384M /dev/zero"],
            "fds": [["stdout", {"capture": {"mode": "tempfile", "attached": False}}]]}}}))
        while True:
            m = await asyncio.wait_for(incoming.get(), 20)
            if m["type"] == "ProcResult" and m["res"]["state"] != "running":
                break
        # While the agent reads the 384 MiB for its reply, the notifications
        # of the shutdown (idling, done) queue behind it; the connection then
        # drops before any of them is sent. (Had the read ended first, they
        # would still be events, not queued notifications, and this would
        # test less: the figures the test was written with had the read take
        # 0.3 s and the drop come at 0.05 s.)
        await ws.send(msgpack.dumps({"type": "ProcFdDataRequest", "proc_id": "big",
                                     "fd": "stdout", "start": 0, "stop": None}))
        await asyncio.sleep(0.01)
        agent.send_signal(signal.SIGQUIT)
        await asyncio.sleep(0.04)
        ws.transport.abort()
        await asyncio.wait_for(agent.wait(), 20)
        assert agent.returncode == 0
        # It did not come back claiming to be active.
        assert all(r["shutdown_state"] != "active" for _, r, _ in links[1:]), \
            [r["shutdown_state"] for _, r, _ in links]
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        server.close()


def self_signed(tmp_path, name, *extra):
    """A self-signed certificate made as `openssl req -x509` makes one
    (`CA:TRUE`), with `extra` arguments; returns (cert, key) paths."""
    import shutil
    import subprocess
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make certificates with")
    crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "2",
                    "-subj", "/CN=localhost", *extra],
                   check=True, capture_output=True)
    return str(crt), str(key)


async def registers_with(chaperone, served, trusted):
    """Whether the agent registers with a server presenting `served` (cert,
    key) when PROCSTAR_AGENT_CERT is `trusted`."""
    server = procstar.agent.server.Server()
    ws = await server.run(host="localhost", port=0, tls_cert=served, access_token="")
    port = ws.sockets[0].getsockname()[1]
    env = dict(os.environ, PROCSTAR_AGENT_CERT=trusted, PROCSTAR_AGENT_TOKEN="")
    agent = await asyncio.create_subprocess_exec(
        chaperone, "--agent", "--agent-host", "localhost", "--agent-port", str(port),
        "--connect-count-max", "1", env=env, stderr=asyncio.subprocess.PIPE)
    try:
        # With --connect-count-max 1 a refused certificate ends the agent.
        await until(lambda: server.connections or agent.returncode is not None, timeout=20)
        return bool(server.connections)
    finally:
        if agent.returncode is None:
            agent.kill()
        await agent.wait()
        ws.close()


@pytest.mark.asyncio
async def test_a_self_signed_ca_certificate_given_as_agent_cert_is_trusted(chaperone, tmp_path):
    """As with Procstar's OpenSSL: a server certificate that is exactly
    PROCSTAR_AGENT_CERT's is taken though it says CA:TRUE (webpki alone
    refuses it as CaUsedAsEndEntity) or names the host only in its CN; one
    that is not the given certificate, or names only other hosts, is not."""
    with_san = self_signed(tmp_path, "san", "-addext", "subjectAltName=DNS:localhost")
    cn_only = self_signed(tmp_path, "cn")
    other = self_signed(tmp_path, "other", "-addext", "subjectAltName=DNS:localhost")
    elsewhere = self_signed(tmp_path, "elsewhere",
                            "-addext", "subjectAltName=DNS:elsewhere.example")
    assert await registers_with(chaperone, with_san, with_san[0])
    assert await registers_with(chaperone, cn_only, cn_only[0])
    assert not await registers_with(chaperone, other, with_san[0])
    # Pinned, but its names are another host's: refused, as by OpenSSL.
    assert not await registers_with(chaperone, elsewhere, elsewhere[0])
    # Only an IP address among its names: for a host name the CN counts, as
    # for OpenSSL's X509_check_host.
    ip_only = self_signed(tmp_path, "ip", "-addext", "subjectAltName=IP:127.0.0.1")
    assert await registers_with(chaperone, ip_only, ip_only[0])


@pytest.mark.asyncio
async def test_an_untrusted_server_certificate_is_named_as_such(chaperone, tmp_path):
    served = self_signed(tmp_path, "san", "-addext", "subjectAltName=DNS:localhost")
    other = self_signed(tmp_path, "other", "-addext", "subjectAltName=DNS:localhost")
    server = procstar.agent.server.Server()
    ws = await server.run(host="localhost", port=0, tls_cert=served, access_token="")
    port = ws.sockets[0].getsockname()[1]
    env = dict(os.environ, PROCSTAR_AGENT_CERT=other[0], PROCSTAR_AGENT_TOKEN="")
    try:
        agent = await asyncio.create_subprocess_exec(
            chaperone, "--agent", "--agent-host", "localhost", "--agent-port", str(port),
            "--connect-count-max", "1", env=env, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(agent.communicate(), 30)
    finally:
        ws.close()
    assert agent.returncode == 1
    # rustls's words name the failed check; the agent's say what to do.
    assert b"not trusted" in err and b"PROCSTAR_AGENT_CERT" in err, err


@pytest.mark.asyncio
async def test_a_short_read_timeout_keeps_an_idle_connection():
    # The agent pings at half the read timeout, and the pongs count as reads.
    asm = Assembly()
    await asm.start_server()
    await asm.start_procstars({"default": 1}, args=PATIENT + ["--agent-read-timeout", "2"])
    try:
        ws = only_conn(asm).ws
        await asyncio.sleep(6)
        assert only_conn(asm).ws is ws, "the agent redialled an idle connection"
        assert only_conn(asm).open
    finally:
        await asm.aclose()
