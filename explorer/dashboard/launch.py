"""Starting the dashboard: the generation service (one model for every viewer) and Voilà serving
notebooks/dashboard.ipynb with preheated viewer kernels, bound to this machine unless asked otherwise."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from pathlib import Path

from ..errors import SettingsError
from ..service.keys import KeyPair, public_key_from
from ..service.protocol import (KEY_ENV, LIMITS_ENV, PUBLIC_KEY_ENV, SECRET_KEY_ENV, SERVICE_ENV, TEACHER_KEY_ENV,
                                Limits, is_loopback)
from ..trace_file import load_traces

NOTEBOOK = "dashboard.ipynb"
# our Voilà template (Voilà's lab template without its CDN stylesheets), found by Voilà through $JUPYTER_PATH
TEMPLATE = "attention-explorer"
TEMPLATES_ROOT = Path(__file__).with_name("jupyter")
TRACE_ENV = "ATTENTION_EXPLORER_TRACE"
# a viewer kernel draws small matrices: one BLAS thread each, so thirty kernels do not fight the model for cores
KERNEL_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def notebook_path() -> Path:
    """The dashboard notebook: notebooks/ of a source checkout; for an installed wheel, which has no notebooks/,
    the same one-cell notebook written into the cache folder."""
    checkout = Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK
    if checkout.is_file():
        return checkout
    import nbformat

    from ..cache import cache_dir

    path = cache_dir() / NOTEBOOK
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("from explorer.dashboard import Dashboard\n\nDashboard.from_environment()")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


SPARE_KERNELS = 2  # a class runs at most this many kernels more than it has students


def pool_size(class_size: int | None) -> int:
    """Viewer kernels started and run ahead of any visitor: one for one user; for a class, one per student up
    to 10, so that ten students arriving within seconds all find one ready (a kernel takes ~1.5 s of CPU to
    start, which on a laptop's two cores would otherwise be paid while the students wait)."""
    return 1 if not class_size else min(10, class_size)


def bound_the_pool(limit: int) -> None:
    """Voilà refills its pool after every page it serves, without end, so a class of 30 would hold 30 kernels
    plus the whole pool. Stop refilling once `limit` kernels run or are starting; a student who comes after that
    gets a kernel started for them, as without a pool. (Voilà has no setting for this: its kernel manager class
    is made by a factory, which we wrap.)"""
    import voila.app

    make = voila.app.voila_kernel_manager_factory

    def factory(base_class, preheat_kernel, default_pool_size, page_config_hook=None):
        manager = make(base_class, preheat_kernel, default_pool_size, page_config_hook=page_config_hook)
        if not preheat_kernel:
            return manager

        class BoundedPool(manager):
            def fill_if_needed(self, *args, **kwargs):
                starting = sum(not task.done() for pool in getattr(self, "_pools", {}).values() for task in pool)
                if len(self) + starting < limit:
                    super().fill_if_needed(*args, **kwargs)

        return BoundedPool

    voila.app.voila_kernel_manager_factory = factory


def voila_arguments(port: int, ip: str, class_size: int | None, token: str | None, voila_args: list[str]) -> list[str]:
    """Voilà's command line: ours first, so that the user's own flags (theme, pool size ...) come last and win."""
    args = [
        str(notebook_path()),
        f"--port={port}",
        f"--Voila.ip={ip}",
        "--Voila.port_retries=0",
        "--no-browser",
        f"--template={TEMPLATE}",  # nothing asked beyond this machine: a classroom may have no internet
        "--preheat_kernel=True",
        f"--pool_size={pool_size(class_size)}",
        "--VoilaKernelManager.fill_delay=0",
        # a kernel's notebook output can come late on a busy machine (measured: over 30 s with 30 pages opening
        # at once on 2 cores); nbclient then drops it and the page stays blank
        "--VoilaExecutor.iopub_timeout=120",
        # a closed page shuts its kernel down with a POST that carries no XSRF token (Voilà 0.5 sets no _xsrf
        # cookie), which jupyter_server refuses: the kernels of closed tabs would pile up. The POST still needs
        # the page's login, and names a random kernel id.
        "--Voila.tornado_settings=disable_check_xsrf=True",
        # kernels of pages left without closing (a laptop lid shut) go after 20 idle minutes
        "--MappingKernelManager.cull_idle_timeout=1200",
        "--MappingKernelManager.cull_interval=60",
    ]
    if token:
        args.append(f"--token={token}")
    return [*args, *voila_args]


def voila_config():
    """What Voilà's command line cannot say without a deprecation warning in every log: serve no files of the
    notebook's folder (by default it serves its images), only the dashboard."""
    from traitlets.config import Config

    return Config({"VoilaConfiguration": {"file_allowlist": []}})


def use_our_template() -> None:
    """Let Voilà find our template: its folder goes first on $JUPYTER_PATH, where Voilà looks for templates."""
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(TEMPLATES_ROOT) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(TEMPLATES_ROOT), *paths])


def _address(ip: str, port: int, token: str | None, teacher: str | None = None) -> str:
    host = ip
    if ip in {"0.0.0.0", "::", ""}:  # every address: hand out the machine's name
        host = socket.gethostname()
    query = [f"token={token}"] * bool(token) + [f"teacher={teacher}"] * bool(teacher)
    return f"http://{host}:{port}/" + ("?" + "&".join(query) if query else "")


def launch(args: argparse.Namespace, voila_args: list[str]) -> int:
    """Serve the dashboard and print the address to hand out; the kernels find the service or the trace in
    their environment."""
    if args.model and args.trace:
        raise SettingsError("give --model or --trace, not both: a saved trace needs no model")
    if args.service and (args.model or args.trace):
        raise SettingsError("--service uses the model of a running service: give no --model or --trace with it")
    class_size = args.class_size
    if any(a.split("=")[0] in {"--ip", "--Voila.ip"} for a in voila_args):
        raise SettingsError("give the address with our --ip, not Voilà's: ours turns the token on beyond localhost")
    ip = args.ip or ("0.0.0.0" if class_size else "127.0.0.1")
    # beyond this machine, only with Jupyter's token: nobody without the printed address can open a kernel
    token = None if is_loopback(ip) or any(a.startswith("--token") for a in voila_args) else secrets.token_urlsafe(24)
    limits = Limits.for_class(class_size) if class_size else Limits()
    env = {LIMITS_ENV: limits.to_json(), **{k: v for k, v in KERNEL_ENV.items() if k not in os.environ}}
    service = None
    if args.trace is not None:
        load_traces(args.trace)  # refuse a bad file now, with our error, rather than in the page (a tree is fine)
        env[TRACE_ENV] = str(args.trace.resolve())
    elif args.service:
        env[SERVICE_ENV] = args.service
        public = public_key_from(args.service_public_key or os.environ.get(PUBLIC_KEY_ENV), "--service-public-key")
        if public is None:
            raise SettingsError(f"--service needs the public key that service printed: --service-public-key KEY "
                                f"(or ${PUBLIC_KEY_ENV}); the connection is encrypted with it")
        env[PUBLIC_KEY_ENV] = public
    else:
        key = secrets.token_urlsafe(24)
        pair = KeyPair.new()  # encrypted even on this machine; the kernels get the public key, the service the pair
        # a class's teacher shows traces to the class with a key of their own: the service has it, no kernel does
        teacher = secrets.token_urlsafe(18) if class_size else None
        service, address = start_service(key, args.model, args.device, args.dtype, class_size, args.threads,
                                         secret_key=pair.secret, teacher_key=teacher)
        env |= {SERVICE_ENV: address, KEY_ENV: key, PUBLIC_KEY_ENV: pair.public}
    os.environ.update(env)  # Voilà's kernels inherit them
    use_our_template()
    if class_size:
        bound_the_pool(class_size + SPARE_KERNELS)
    from voila.app import main as voila_main

    who = f"a class of {class_size}" if class_size else "you"
    print(f"attention-explorer dashboard for {who}: {_address(ip, args.port, token)}  (Ctrl-C stops it)", flush=True)
    if class_size and args.trace is None and not args.service:
        print(f"the teacher's address (keep it to yourself: it shows traces to the class): "
              f"{_address(ip, args.port, token, teacher)}", flush=True)
    sys.argv = ["voila", *voila_arguments(args.port, ip, class_size, token, voila_args)]
    try:
        voila_main(config=voila_config())
    finally:
        if service is not None:
            service.stop()
    return 0


def start_service(key: str, model: str | None, device: str = "auto", dtype: str = "auto",
                  class_size: int | None = None, threads: int | None = None, secret_key: str | None = None,
                  teacher_key: str | None = None):
    """The generation service in a child process kept alive, on a port of this machine bound here and handed
    over: (the ServiceProcess, its address)."""
    from ..service.supervisor import ServiceProcess, listening_socket

    listening, address = listening_socket()
    service_args = ["--bind", address, "--device", device, "--dtype", dtype]
    service_args += ["--model", model] if model else []
    service_args += ["--class", str(class_size)] if class_size else []
    service_args += ["--threads", str(threads)] if threads else []
    env = {KEY_ENV: key, **({SECRET_KEY_ENV: secret_key} if secret_key else {}),
           **({TEACHER_KEY_ENV: teacher_key} if teacher_key else {})}
    return ServiceProcess(service_args, env=env, listening=listening).start(), address
