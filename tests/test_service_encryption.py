"""The generation service's CURVE encryption: a round trip still gives the trace the same model gives here; the
bytes on the wire, recorded by a TCP proxy between client and service, hold none of the prompt (while without
encryption they do); a client without the service's public key, or with a wrong one, gets a sentence at once;
key files that others may read, or that are not key files, are refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
import zmq.auth
from test_service import assert_same_trace, service_in_this_process
from voila_harness import OUTPUT, free_port
from zmq.utils.monitor import recv_monitor_message

from explorer.cli import main
from explorer.errors import KeyFileError, ServiceError, SettingsError
from explorer.service import RemoteModel
from explorer.service import protocol as p
from explorer.service.client import HANDSHAKE_FAILED
from explorer.service.keys import KeyPair, service_key_pair

PROMPT = "Quokkas-of-Zanzibar 7319 whisper"  # a string no protocol or key would hold by chance
SHARED_KEY = "shared-key-4242-never-on-the-wire"


@contextmanager
def tiny_service(secret_key: str | None):
    """A tiny Llama behind a service in this process, encrypted when given `secret_key`: (address, service, lm)."""
    from conftest import make_tiny_lm

    lm = make_tiny_lm("llama")

    def load(service):
        service.lm = lm
        service.status.model = lm.info().to_dict()
        service._stage(100, "ready")
        service.status.state = "ready"

    with service_in_this_process(load, key=SHARED_KEY, secret_key=secret_key) as (address, service):
        yield address, service, lm


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 that forwards each connection to `upstream_port` and keeps every byte it carries,
    each chunk recorded before it is passed on: once a client has its answer, the bytes of the exchange are here."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.to_service, self.to_client = bytearray(), bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, self.to_service), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.to_client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                record += data
            try:
                sink.sendall(data)
            except OSError:
                break
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        except OSError:
            pass
        self._listener.close()
        for s in self._sockets:
            s.close()


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_an_encrypted_round_trip_gives_the_trace_the_same_model_gives_here():
    pair = KeyPair.new()
    with tiny_service(pair.secret) as (address, _, lm):
        remote = RemoteModel(address, SHARED_KEY, server_key=pair.public)
        tokens = []
        got = remote.generate(PROMPT, max_new_tokens=6, on_token=lambda done, total, text: tokens.append(text))
        want = lm.generate(PROMPT, 6, keep_values=True, progress=False)
        assert_same_trace(got, want)
        assert "".join(tokens) == want.generated_text  # the tokens came one by one, encrypted too
        assert remote.status().ready and remote.info().name == "tiny-llama"
        remote.close()


@pytest.mark.parametrize("encrypted", [True, False], ids=["curve", "plaintext-control"])
def test_the_prompt_never_crosses_the_wire_in_clear(encrypted):
    """The same round trip through a proxy that records the bytes: encrypted, neither the prompt, the shared key,
    nor a word of the protocol is on the wire; the plaintext control run shows that the proxy would have seen them."""
    pair = KeyPair.new()
    with tiny_service(pair.secret if encrypted else None) as (address, _, lm):
        proxy = RecordingProxy(port_of(address))
        try:
            remote = RemoteModel(f"tcp://127.0.0.1:{proxy.port}", SHARED_KEY,
                                 server_key=pair.public if encrypted else None)
            got = remote.generate(PROMPT, max_new_tokens=4)
            remote.close()
        finally:
            proxy.close()
        assert_same_trace(got, lm.generate(PROMPT, 4, keep_values=True, progress=False))
        sent, answered = bytes(proxy.to_service), bytes(proxy.to_client)
        assert len(answered) > len(got.to_bytes()) // 2, "the answer did not go through the proxy"
        in_clear = {"the prompt": PROMPT.encode() in sent, "the shared key": SHARED_KEY.encode() in sent,
                    "the request": b'"kind": "generate"' in sent, "the trace": b'"kind": "captured"' in answered}
        assert in_clear == dict.fromkeys(in_clear, not encrypted), in_clear


def test_a_client_without_the_key_or_with_a_wrong_one_gets_a_sentence_at_once_and_the_service_goes_on():
    pair = KeyPair.new()
    with tiny_service(pair.secret) as (address, service, _):
        outcomes = {}

        def ask(name: str, **kwargs) -> None:
            remote = RemoteModel(address, SHARED_KEY, silence_seconds=5, **kwargs)
            for call in (lambda: remote.status(timeout=5), lambda: remote.generate(PROMPT, max_new_tokens=2)):
                try:
                    outcomes.setdefault(name, []).append(call())
                except ServiceError as e:
                    outcomes.setdefault(name, []).append(str(e))

        threads = [threading.Thread(target=ask, args=("no key",)),
                   threading.Thread(target=ask, args=("wrong key",), kwargs={"server_key": KeyPair.new().public})]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "a client without the right key hung"
        no_key = (f"the generation service at {address} refused the connection: it is encrypted, and this client "
                  "has no key for it: give it the public key `attention-explorer serve` printed "
                  "($ATTENTION_EXPLORER_SERVICE_PUBLIC_KEY, or dashboard --service-public-key)")
        assert outcomes["no key"] == [no_key, no_key], outcomes
        assert all("refused the encrypted connection: the public key given is not its key" in o
                   for o in outcomes["wrong key"]) and len(outcomes["wrong key"]) == 2, outcomes
        assert len(service.queue) == 0 and not service._running  # nothing of theirs reached the service
        # a bare ZeroMQ client in clear: its handshake fails, so its request never reaches the service
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        monitor = raw.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED)
        raw.connect(address)
        raw.send(p.encode({"kind": p.STATUS, "key": SHARED_KEY}))
        assert monitor.poll(10_000), "no handshake happened"
        assert recv_monitor_message(monitor)["event"] & HANDSHAKE_FAILED
        assert not raw.poll(0), "a client in clear got an answer"
        raw.disable_monitor()
        monitor.close(0)
        raw.close(0)
        right = RemoteModel(address, SHARED_KEY, server_key=pair.public)  # and the service goes on
        assert right.generate("Hi", max_new_tokens=2).n_generated == 2
        right.close()
    with (tiny_service(None) as (address, _, _),  # a key for a service that does not encrypt
          pytest.raises(ServiceError, match="refused the encrypted connection.*or it does not encrypt")):
        RemoteModel(address, SHARED_KEY, server_key=pair.public).status(timeout=5)


def test_a_wrong_shared_key_is_still_refused_over_an_encrypted_connection():
    pair = KeyPair.new()
    with tiny_service(pair.secret) as (address, _, _), pytest.raises(ServiceError, match="wrong key"):
        RemoteModel(address, "not the key", server_key=pair.public).status(timeout=5)


def test_public_keys_are_checked_before_connecting():
    for bad, message in [("short", "must be the 40 characters"), ("\"" * 40, "characters a ZeroMQ key"),
                         ("#" * 40, "characters a ZeroMQ key")]:
        with pytest.raises(SettingsError, match=message):
            RemoteModel("tcp://127.0.0.1:1", server_key=bad)


def test_a_key_file_is_made_for_its_owner_only_and_read_back_as_zeromq_reads_it(tmp_path, monkeypatch):
    monkeypatch.delenv(p.SECRET_KEY_ENV, raising=False)
    path = tmp_path / "keys" / "service.key_secret"
    made = service_key_pair(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    public, secret = zmq.auth.load_certificate(path)  # ZeroMQ's own reader as the reference
    assert (public.decode(), secret.decode()) == (made.public, made.secret)
    assert zmq.curve_public(secret) == public  # the pair belongs together
    assert service_key_pair(path) == made  # the same pair at the next start
    assert service_key_pair(None) != made  # no file: a new pair each start
    monkeypatch.setenv(p.SECRET_KEY_ENV, made.secret)  # how a dashboard hands its service the pair
    assert service_key_pair(None) == made
    # a certificate made by ZeroMQ's own tool is read too, once only its owner may read it
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "theirs")
    os.chmod(secret_file, 0o600)
    assert KeyPair.read(Path(secret_file)).public == zmq.auth.load_certificate(public_file)[0].decode()


def test_key_files_that_others_may_read_or_that_are_not_key_files_are_refused(tmp_path, capsys):
    good = KeyPair.new().write(tmp_path / "good.key_secret")
    text = (tmp_path / "good.key_secret").read_text()
    other = KeyPair.new()
    cases = {
        "readable by the group": (text, 0o640, "can be read by other users (permissions 0640)"),
        "readable by anyone": (text, 0o644, "can be read by other users (permissions 0644)"),
        "not a certificate": ("hello\n", 0o600, "is not a ZeroMQ certificate (No public key found"),
        "a public certificate": (text.split("    secret-key")[0], 0o600, "holds a public key only"),
        "a truncated secret": (text.replace(good.secret, good.secret[:30]), 0o600, "is corrupt: the secret key in"),
        "another's public key": (text.replace(good.public, other.public), 0o600,
                                 "is corrupt: its public key is not the one of its secret key"),
        "binary junk": (None, 0o600, "is not a ZeroMQ certificate"),
    }
    for name, (content, mode, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.key_secret"
        path.write_bytes(os.urandom(300) if content is None else content.encode())
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            KeyPair.read(path)
        # serve refuses it in one line before it binds or loads anything
        assert main(["serve", "--bind", f"tcp://127.0.0.1:{free_port()}", "--key-file", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("attention-explorer: error: the key file") and "Traceback" not in err, err
    with pytest.raises(KeyFileError, match="is not a file"):
        KeyPair.read(tmp_path)


def test_serve_prints_its_public_key_and_a_client_given_it_is_answered(tmp_path):
    """`serve --key-file` as a user runs it: the key it prints is the file's, and talks to it (its model cannot load
    here, on purpose: the service still answers status questions, encrypted)."""
    key_file = tmp_path / "service.key_secret"
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in (p.SECRET_KEY_ENV, p.KEY_ENV)}
    OUTPUT.mkdir(exist_ok=True)
    with open(OUTPUT / f"serve-keyfile-{port_of(address)}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--bind", address, "--key-file",
                                 str(key_file), "--model", str(tmp_path / "no-model")], env=env,
                                stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        first = proc.stdout.readline()  # waits for the line, however long the start takes
        hints = proc.stdout.readline() + proc.stdout.readline()
        public = zmq.auth.load_certificate(key_file)[0].decode()
        assert first.startswith(f"encrypted: clients need the service's public key {public} (kept in {key_file})")
        assert f"--service {address} --service-public-key '{public}'" in hints
        assert f"{p.PUBLIC_KEY_ENV}='{public}'" in hints
        status = RemoteModel(address, server_key=public).status(timeout=10)
        assert status.state in ("loading", "failed")
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_dashboard_hands_the_public_key_to_its_kernels_and_refuses_a_service_without_one(monkeypatch, capsys):
    monkeypatch.delenv(p.PUBLIC_KEY_ENV, raising=False)
    assert main(["dashboard", "--service", "tcp://127.0.0.1:5555"]) == 2
    assert "--service needs the public key that service printed" in capsys.readouterr().err
    assert main(["dashboard", "--service", "tcp://127.0.0.1:5555", "--service-public-key", "abc"]) == 2
    assert "--service-public-key must be the 40 characters" in capsys.readouterr().err
    # a kernel reads the address, the shared key and the public key from its environment, and is answered
    pair = KeyPair.new()
    with tiny_service(pair.secret) as (address, _, _):
        monkeypatch.setenv(p.SERVICE_ENV, address)
        monkeypatch.setenv(p.KEY_ENV, SHARED_KEY)
        monkeypatch.setenv(p.PUBLIC_KEY_ENV, pair.public)
        remote = RemoteModel.from_environment()
        assert remote.server_key == pair.public and remote.status(timeout=5).state in ("loading", "ready")
        remote.close()
