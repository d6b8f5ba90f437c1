"""The JupyterHub files a department copies, read as JupyterHub reads them (no hub started: test_browser_hub.py runs
one): the students' environment comes from the hub's, a hub without a service is refused in a sentence, and a
student's server is started on the dashboard's folder with our template and no MathJax from a CDN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from traitlets.config import Config

from explorer.dashboard.launch import NOTEBOOK, TEMPLATE
from explorer.dashboard.singleuser import DASHBOARD_URL, singleuser_arguments, use_our_server_config
from explorer.service import protocol as p

HUB = Path(__file__).resolve().parents[1] / "hub"


def read_config(name: str) -> Config:
    """Run a hub config file as JupyterHub does (get_config, load_subconfig) and return what it set."""
    config = Config()
    path = HUB / name

    def load_subconfig(other: str) -> None:
        exec(compile(Path(other).read_text(), other, "exec"), {"get_config": lambda: config, "__file__": other})

    exec(compile(path.read_text(), str(path), "exec"),
         {"get_config": lambda: config, "load_subconfig": load_subconfig, "__file__": str(path)})
    return config


def test_the_students_kernels_get_the_service_from_the_hubs_environment(monkeypatch):
    monkeypatch.setenv(p.SERVICE_ENV, "tcp://gpu-box:5555")
    monkeypatch.setenv(p.KEY_ENV, "the-key")
    monkeypatch.setenv(p.PUBLIC_KEY_ENV, "public-key-of-the-service")
    monkeypatch.delenv(p.LIMITS_ENV, raising=False)
    monkeypatch.delenv(p.SECRET_KEY_ENV, raising=False)
    c = read_config("jupyterhub_config.py")
    env = c.Spawner.environment
    assert env[p.SERVICE_ENV] == "tcp://gpu-box:5555" and env[p.KEY_ENV] == "the-key"
    assert env[p.PUBLIC_KEY_ENV] == "public-key-of-the-service" and p.SECRET_KEY_ENV not in env
    assert p.Limits.from_json(env[p.LIMITS_ENV]) == p.Limits.from_json(p.Limits.for_class(200).to_json())
    assert c.Spawner.cmd == ["attention-explorer", "singleuser"] and c.Spawner.default_url == DASHBOARD_URL
    # the department keeps its own login and spawner: this file sets neither
    assert "authenticator_class" not in c.JupyterHub and "spawner_class" not in c.JupyterHub


def test_the_limits_the_hub_is_given_go_to_the_kernels(monkeypatch):
    monkeypatch.setenv(p.SERVICE_ENV, "tcp://gpu-box:5555")
    monkeypatch.setenv(p.PUBLIC_KEY_ENV, "public-key-of-the-service")
    monkeypatch.setenv(p.LIMITS_ENV, json.dumps({"max_new_tokens": 12}))
    assert json.loads(read_config("jupyterhub_config.py").Spawner.environment[p.LIMITS_ENV]) == {"max_new_tokens": 12}


def test_a_hub_without_the_service_is_refused_in_a_sentence(monkeypatch):
    monkeypatch.delenv(p.SERVICE_ENV, raising=False)
    monkeypatch.setenv(p.PUBLIC_KEY_ENV, "public-key-of-the-service")
    with pytest.raises(SystemExit, match=r"set \$ATTENTION_EXPLORER_SERVICE to what `attention-explorer serve` printed"):
        read_config("jupyterhub_config.py")


def test_the_test_login_is_only_in_the_file_for_this_machine(monkeypatch, tmp_path):
    monkeypatch.setenv(p.SERVICE_ENV, "tcp://127.0.0.1:5555")
    monkeypatch.setenv(p.PUBLIC_KEY_ENV, "public-key-of-the-service")
    for name, port in [("DIR", str(tmp_path)), ("PORT", "1"), ("API_PORT", "2"), ("HUB_PORT", "3")]:
        monkeypatch.setenv(f"ATTENTION_EXPLORER_HUB_{name}", port)
    c = read_config("on_this_machine.py")
    assert c.JupyterHub.authenticator_class == "dummy" and c.JupyterHub.spawner_class == "simple"
    assert c.JupyterHub.bind_url == "http://127.0.0.1:1" and c.JupyterHub.hub_ip == "127.0.0.1"
    assert c.SimpleLocalProcessSpawner.home_dir_template == str(tmp_path / "homes" / "{username}")
    assert c.Spawner.environment[p.SERVICE_ENV] == "tcp://127.0.0.1:5555"  # the department's file, underneath


def test_a_students_server_shows_the_dashboard_with_our_template_and_asks_no_cdn(monkeypatch, tmp_path):
    from jupyter_server.serverapp import ServerApp

    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    use_our_server_config()
    ours = ServerApp()
    ours.parse_command_line(singleuser_arguments([]))
    ours.load_config_file()
    assert (Path(ours.root_dir) / NOTEBOOK).is_file() and DASHBOARD_URL == f"/voila/render/{NOTEBOOK}"
    assert ours.config.VoilaConfiguration.template == TEMPLATE
    # Voilà's page asks a CDN for MathJax unless both are None
    assert ours.tornado_settings == {"mathjax_url": None, "mathjax_config": None}
    for flag in ("--notebook-dir", "--ServerApp.root_dir"):  # a hub's Spawner.notebook_dir is its to choose
        theirs = ServerApp()
        theirs.parse_command_line(singleuser_arguments([f"{flag}={tmp_path}"]))
        assert theirs.root_dir == str(tmp_path)


def test_without_its_proxy_the_hub_says_how_to_install_it(monkeypatch, tmp_path):
    import hub_harness

    monkeypatch.setattr(hub_harness, "LOCAL_PROXY", tmp_path / "node" / "node_modules" / ".bin" / hub_harness.PROXY)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(hub_harness.ProxyMissing, match=r"run `make install` \(it runs `npm install --prefix .*node "
                                                       r"configurable-http-proxy`\), or `npm install -g"):
        hub_harness.find_proxy()
