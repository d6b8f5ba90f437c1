"""JupyterHub for a class of attention-explorer: every student gets their own Jupyter server, which opens the
dashboard (Voilà) and asks one shared generation service for traces. Copy this file; keep your own authenticator
and spawner (this file sets neither).

On the GPU box, once:
    attention-explorer serve --bind tcp://0.0.0.0:5555 --class 200 --key-file ~/.attention-explorer/service.key_secret
and give the hub what it printed, in its environment:
    ATTENTION_EXPLORER_SERVICE=tcp://gpu-box:5555
    ATTENTION_EXPLORER_SERVICE_KEY=<the key serve printed>
    ATTENTION_EXPLORER_SERVICE_PUBLIC_KEY=<the public key serve printed>
    ATTENTION_EXPLORER_LIMITS='{"max_new_tokens": 32, ...}'   (optional; the class limits below otherwise)
The single-user image needs attention-explorer and jupyterhub installed (no torch is used there).
`serve --class` also prints the teacher's key: the teacher opens their dashboard with ?teacher=KEY after its address
to get Show to the class (the key stays with the service: students' kernels never get it).
"""

import json
import os

c = get_config()  # noqa: F821 (JupyterHub defines it)

SERVICE = "ATTENTION_EXPLORER_SERVICE"
KEY = "ATTENTION_EXPLORER_SERVICE_KEY"
PUBLIC_KEY = "ATTENTION_EXPLORER_SERVICE_PUBLIC_KEY"
LIMITS = "ATTENTION_EXPLORER_LIMITS"
# what `attention-explorer dashboard --class 200` gives its pages: 32 new tokens after at most 256 prompt tokens,
# uploads up to 20 MB, saved traces as downloads (the service itself caps what it is asked: serve --class N)
CLASS_LIMITS = {"max_new_tokens": 32, "max_prompt_tokens": 256, "max_waiting": 400, "upload_bytes": 20_000_000,
                "class_size": 200}

missing = [name for name in (SERVICE, PUBLIC_KEY) if not os.environ.get(name)]
if missing:
    raise SystemExit(f"jupyterhub_config.py: set {' and '.join('$' + m for m in missing)} to what "
                     f"`attention-explorer serve` printed (the service's address and public key)")

# the students' kernels reach the service with these; they hold its public key, never its secret
c.Spawner.environment = {
    SERVICE: os.environ[SERVICE],
    KEY: os.environ.get(KEY, ""),
    PUBLIC_KEY: os.environ[PUBLIC_KEY],
    LIMITS: os.environ.get(LIMITS) or json.dumps(CLASS_LIMITS),
}
# jupyterhub-singleuser with Voilà as a server extension, our offline template and the dashboard notebook
c.Spawner.cmd = ["attention-explorer", "singleuser"]
c.Spawner.default_url = "/voila/render/dashboard.ipynb"
