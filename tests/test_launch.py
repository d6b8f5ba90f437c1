"""The dashboard's Voilà settings, read as Voilà reads them (no server started: the browser tests run one)."""

from __future__ import annotations

import re
import warnings

from voila.app import Voila
from voila.configuration import VoilaConfiguration

from explorer.dashboard.launch import voila_arguments, voila_config


def test_voila_is_told_to_serve_no_files_of_the_folder_and_warns_of_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated form of a setting would print in every dashboard's log
        app = Voila(config=voila_config())
        app.parse_command_line(voila_arguments(8866, "127.0.0.1", 10, "a-token", ["--theme=dark"]))
        served = VoilaConfiguration(parent=app)
    assert served.file_allowlist == []  # Voilà's default serves the folder's images
    assert not any(re.fullmatch(p, name, re.IGNORECASE) for p in served.file_allowlist
                   for name in ["dashboard.ipynb", "picture.png"])
    assert served.theme == "dark" and app.port == 8866 and app.ip == "127.0.0.1"  # the user's own flags still count
