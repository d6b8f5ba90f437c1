"""A student's own Jupyter server under JupyterHub (`attention-explorer singleuser`, the spawner's command): JupyterHub's
`jupyterhub-singleuser`, with Voilà as a server extension showing the dashboard notebook through our offline template.

It runs where the dashboard runs (the single-user image), so it finds the notebook and the template itself, and
the hub's configuration need not know where attention-explorer is installed. The viewer kernels find the
generation service through the environment the hub gives them ($ATTENTION_EXPLORER_SERVICE and its keys).
"""

from __future__ import annotations

import os
import sys

from .launch import KERNEL_ENV, NOTEBOOK, TEMPLATE, TEMPLATES_ROOT, notebook_path, use_our_template

# where the hub sends a student (c.Spawner.default_url): the dashboard, rendered by Voilà's server extension
DASHBOARD_URL = f"/voila/render/{NOTEBOOK}"
# jupyter_server_config.json there: Voilà's page asks a CDN for MathJax unless the server sets both of its MathJax
# settings to None, as Voilà alone does (a server extension's jupyter_server sets neither); the dashboard has no
# formulas. A file, not a flag: a dict flag cannot say None without a deprecated form.
SERVER_CONFIG = TEMPLATES_ROOT / "config"
# the spawner's flags that name the server's root (Spawner.notebook_dir): then the spawner's folder is used
ROOT_FLAGS = ("--notebook-dir", "--ServerApp.root_dir", "--NotebookApp.notebook_dir", "--ServerApp.notebook_dir")


def singleuser_arguments(user_args: list[str]) -> list[str]:
    """jupyterhub-singleuser's command line: ours first, the spawner's own after, so that theirs win; the dashboard's
    folder is the server's root unless the hub names one (Spawner.notebook_dir: then the notebook must be there)."""
    args = [
        f"--VoilaConfiguration.template={TEMPLATE}",  # nothing asked beyond this machine: a class may be offline
        # a kernel's notebook output can come late on a busy machine (see launch.voila_arguments)
        "--VoilaExecutor.iopub_timeout=120",
        # kernels of pages left open but idle go after 20 minutes, as in a class on one server
        "--MappingKernelManager.cull_idle_timeout=1200",
        "--MappingKernelManager.cull_interval=60",
    ]
    if not any(a.split("=")[0] in ROOT_FLAGS for a in user_args):
        # the folder of the dashboard notebook is the server's root, so /voila/render/dashboard.ipynb is it
        args.insert(0, f"--ServerApp.root_dir={notebook_path().parent}")
    return [*args, *user_args]


def use_our_server_config() -> None:
    """Put our jupyter_server_config.json on $JUPYTER_CONFIG_PATH, first (see SERVER_CONFIG)."""
    paths = [p for p in os.environ.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p]
    if str(SERVER_CONFIG) not in paths:
        os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join([str(SERVER_CONFIG), *paths])


def main(user_args: list[str]) -> int:
    """Run JupyterHub's single-user server with the dashboard (its arguments come from the spawner)."""
    try:
        from jupyterhub.singleuser import main as singleuser_main
    except ImportError as e:
        from ..errors import SettingsError

        raise SettingsError(f"`singleuser` runs under JupyterHub: install jupyterhub beside attention-explorer "
                            f"(pip install jupyterhub) ({e})") from e
    use_our_template()  # $JUPYTER_PATH, where Voilà's extension looks for templates
    use_our_server_config()
    for name, value in KERNEL_ENV.items():  # one BLAS thread per viewer kernel, unless the hub says otherwise
        os.environ.setdefault(name, value)
    sys.argv = ["jupyterhub-singleuser", *singleuser_arguments(user_args)]
    return singleuser_main() or 0
