"""explorer.views' public names: each is the function or class it names, whatever was imported before it."""

from __future__ import annotations

import subprocess
import sys


def test_every_public_name_is_a_function_or_class_never_a_module():
    # `import *` takes the names in __all__'s order: AttentionMathView before attention_math, HeadAtlasView before
    # head_atlas; a module of the same name beside explorer/views/__init__.py would shadow the function
    code = ("import types\nfrom explorer.views import *\nimport explorer.views as v\n"
            "print([n for n in v.__all__ if isinstance(getattr(v, n), types.ModuleType)])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
