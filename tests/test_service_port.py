"""The dashboard's generation service and its port: bound by the dashboard and handed to the service process, so
that another program cannot take it between the choice and the bind."""

from __future__ import annotations

import socket
import subprocess
import time
from types import SimpleNamespace

from explorer.dashboard import launch
from explorer.service import RemoteModel, supervisor
from explorer.service.keys import KeyPair


def test_a_port_taken_just_before_the_service_starts_does_not_stop_it(monkeypatch, tmp_path):
    """Another program binds the service's port just before each service process starts. A service told to bind
    the port itself would die on 'Address already in use' at every restart; one given the dashboard's bound
    socket serves, and the other program could not take the port at all."""
    taken: list[socket.socket] = []

    def popen_after_another_program(command, **kwargs):
        port = int(command[command.index("--bind") + 1].rsplit(":", 1)[1])
        other = socket.socket()
        try:
            other.bind(("127.0.0.1", port))
            other.listen(1)
            taken.append(other)
        except OSError:  # the port is held already
            other.close()
        return subprocess.Popen(command, **kwargs)

    monkeypatch.setattr(supervisor, "subprocess", SimpleNamespace(
        Popen=popen_after_another_program, TimeoutExpired=subprocess.TimeoutExpired))
    # a model folder that is not there: the service answers (then says it failed) without loading a model
    pair = KeyPair.new()
    service, address = launch.start_service("k3y", model=str(tmp_path / "no-model"), secret_key=pair.secret)
    remote = RemoteModel(address, "k3y", server_key=pair.public)
    try:
        status = remote.status(timeout=60)
        assert status.state in {"loading", "failed"}
        assert taken == [], "another program took the service's port"
        first = service.process
        first.kill()  # a service that dies is started again on the same socket, which nobody took meanwhile
        first.wait(10)
        deadline = time.monotonic() + 60
        while service.process is first:
            assert time.monotonic() < deadline, "the service was not started again"
            time.sleep(0.1)
        assert remote.status(timeout=60).state in {"loading", "failed"}
        assert taken == [], "another program took the service's port"
    finally:
        remote.close()
        service.stop()
        for other in taken:
            other.close()


def test_a_service_told_to_bind_a_taken_port_says_so_in_a_sentence():
    import pytest

    from explorer.errors import ServiceError
    from explorer.service.server import GenerationService

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        service = GenerationService(f"tcp://127.0.0.1:{other.getsockname()[1]}")
        with pytest.raises(ServiceError, match="could not listen on tcp://127.0.0.1:.*Address already in use"):
            service.run()
        service.stop(timeout=5)  # and it stops (nothing of it is left open)
