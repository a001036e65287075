"""`phg 11073 listen` as a user runs it: a real subprocess accepting an agent over TCP, its readings
queued in the configured outbox."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ieee11073_agent import Agent, session
from phg.demo.peers import free_port
from phg.outbox import Outbox

PHG = str(Path(sys.executable).parent / "phg")


def wait_listening(port: int, process: subprocess.Popen, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"phg 11073 listen did not listen on {port}")


def test_listen_queues_an_agents_readings(tmp_path):
    port = free_port()
    outbox_path = tmp_path / "outbox.sqlite"
    config = tmp_path / "phg.toml"
    config.write_text(f'[patient]\nsystem = "urn:oid:1.2.3.4.5"\nvalue = "pt-listen"\n[outbox]\npath = "{outbox_path}"\n')
    env = {**os.environ, "PHG_CONFIG": str(config), "PHG_FHIR_BASE_URL": ""}
    process = subprocess.Popen([PHG, "11073", "listen", "--tcp", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, process)
        result = asyncio.run(asyncio.wait_for(session("127.0.0.1", port, Agent("blood_pressure"), reports=2), 30))
        assert result["release"] == "Rlre" and len(result["acks"]) == 2
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    # Without -v it says where it listens (issue 11: 6), on stderr.
    assert f"listening for IEEE 11073-20601 agents on 127.0.0.1:{port}" in process.stderr.read()
    with Outbox(outbox_path) as outbox:
        items = outbox.items("fhir")
    assert len(items) == 2  # acknowledged only after they were durable: both are here
    assert all('"value":"pt-listen"' in item.payload for item in items)
