"""The same hub on this machine only, for the tests and benchmarks/bench_hub.py: jupyterhub_config.py as a
department copies it, with a test-only login (any name, any password) and every student's server a process of
this user in a folder of its own. Never use it for a real class: anyone who reaches the port can log in.

    jupyterhub -f hub/on_this_machine.py     with $ATTENTION_EXPLORER_HUB_DIR (database, cookie secret, homes)
                                             and $ATTENTION_EXPLORER_HUB_PORT, _API_PORT, _HUB_PORT (free ports)
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub defines it)
load_subconfig(str(Path(__file__).with_name("jupyterhub_config.py")))  # noqa: F821

state = Path(os.environ["ATTENTION_EXPLORER_HUB_DIR"])
c.JupyterHub.authenticator_class = "dummy"  # test only: any name, any password
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"  # SimpleLocalProcessSpawner: servers run as this user, HOME below state/
c.SimpleLocalProcessSpawner.home_dir_template = str(state / "homes" / "{username}")
c.Spawner.cmd = [os.environ.get("ATTENTION_EXPLORER_CLI", "attention-explorer"), "singleuser"]
if os.geteuid() == 0:  # a container's root (CI): Jupyter refuses root unless told
    c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 120  # two cores starting several servers and kernels at once
c.Spawner.http_timeout = 120

# this machine only, on ports the caller chose free
c.JupyterHub.bind_url = f"http://127.0.0.1:{os.environ['ATTENTION_EXPLORER_HUB_PORT']}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["ATTENTION_EXPLORER_HUB_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['ATTENTION_EXPLORER_HUB_API_PORT']}"
c.ConfigurableHTTPProxy.command = [os.environ.get("ATTENTION_EXPLORER_PROXY", "configurable-http-proxy")]
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
