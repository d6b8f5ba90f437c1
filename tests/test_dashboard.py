"""The dashboard's logic without a browser: generate, errors that lose nothing, load, save, views released."""

import datetime
import os
from pathlib import Path

import ipywidgets as widgets

import explorer
from conftest import make_tiny_lm
from explorer.dashboard import Dashboard

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "dashboard.ipynb"


def message(board) -> str:
    return board.message.value


def test_generate_shows_the_trace_in_the_open_view():
    board = Dashboard(make_tiny_lm("llama"), prompt="abc")
    board.max_new_tokens.value = 5
    trace = board.generate()
    assert trace is not None and trace.n_generated == 5 and board.trace is trace
    assert "Generated 5 tokens" in message(board) and "ae-info" in message(board)
    stepper = board.explorer.tabs.children[0].children[0]
    assert stepper.trace is trace
    assert board.progress.value == board.progress.max


def test_bad_settings_show_a_message_and_keep_the_trace():
    board = Dashboard(make_tiny_lm("llama"), prompt="abc")
    board.max_new_tokens.value = 3
    shown = board.generate()
    for change, expected in [
        (lambda: setattr(board.prompt, "value", ""), "prompt is empty"),
        (lambda: setattr(board.max_new_tokens, "value", 0), "at least 1"),
        (lambda: setattr(board.max_new_tokens, "value", 10_000), "too many"),
    ]:
        board.prompt.value, board.max_new_tokens.value = "abc", 3
        change()
        assert board.generate() is None
        assert expected in message(board) and "ae-error" in message(board)
        assert board.trace is shown and not board.generate_button.disabled
    board.prompt.value, board.max_new_tokens.value, board.mode.value = "abc", 3, "sample"
    for field, value, expected in [("temperature", 0.0, "temperature &gt; 0"), ("top_p", 1.5, "top_p"),
                                   ("top_k", -2, "top_k"), ("seed", "x1", "seed")]:
        old = getattr(board, field).value
        getattr(board, field).value = value
        assert board.generate() is None and expected in message(board), field
        getattr(board, field).value = old
    board.seed.value = "4"
    assert board.generate().settings["seed"] == 4


def test_loading_a_file_replaces_the_trace_and_a_bad_one_says_so(tmp_path, tiny_trace):
    board = Dashboard(make_tiny_lm("llama"), prompt="abc")
    board.max_new_tokens.value = 2
    board.generate()
    tiny_trace.save(tmp_path / "t.trace")
    board.upload.value = ({"name": "junk.trace", "content": memoryview(b"not a trace"), "size": 11,
                           "type": "", "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    assert "junk.trace" in message(board) and "ae-error" in message(board) and board.trace.n_generated == 2
    data = (tmp_path / "t.trace").read_bytes()
    board.upload.value = ({"name": "t.trace", "content": memoryview(data), "size": len(data), "type": "",
                           "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    assert "Loaded t.trace" in message(board) and board.trace.token_ids == tiny_trace.token_ids


def test_save_writes_a_trace_and_offers_a_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    board = Dashboard(make_tiny_lm("gpt2"), prompt="abc")
    board.max_new_tokens.value = 2
    trace = board.generate()
    path = board.save()
    assert explorer.load_trace(path).token_ids == trace.token_ids
    assert "download=" in board.links.value and "data:application/octet-stream;base64," in board.links.value
    board.export()
    assert "data:text/html;base64," in board.links.value


def test_old_views_and_traces_are_released_when_a_new_trace_comes():
    import gc
    import weakref

    board = Dashboard(make_tiny_lm("llama"), prompt="abc")
    board.max_new_tokens.value = 2
    old_trace = weakref.ref(board.generate())
    for index in range(len(board.explorer.tabs.children)):  # open every view
        board.explorer.tabs.selected_index = index
    assert all(box.children for box in board.explorer.tabs.children)
    old_views = [box.children[0] for box in board.explorer.tabs.children]
    old_ids = {v.model_id for v in old_views}
    del old_views
    board.generate()
    gc.collect()
    assert not old_ids & set(widgets.Widget.widgets)  # closed
    assert old_trace() is None  # and nothing holds the old trace: memory does not grow press after press


def test_the_dashboard_notebook_runs_as_a_plain_notebook_on_a_saved_trace(tmp_path, tiny_trace):
    import nbformat
    from nbclient import NotebookClient

    tiny_trace.save(tmp_path / "t.trace")
    os.environ["ATTENTION_EXPLORER_TRACE"] = str(tmp_path / "t.trace")
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        del os.environ["ATTENTION_EXPLORER_TRACE"]
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    (view,) = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for o in outputs if "data" in o]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert "ae-dashboard" in state[view]["state"]["_dom_classes"]  # the cell shows the dashboard itself
    texts = [str(m["state"].get("value")) for m in state.values()]
    assert any("no model is loaded" in t for t in texts)  # in the saved trace's mode, not a model's


def test_an_upload_over_the_limit_is_refused_before_it_is_read(tmp_path, tiny_trace):
    from explorer.service import Limits

    board = Dashboard(make_tiny_lm("llama"), prompt="abc", limits=Limits(upload_bytes=10_000))
    board.max_new_tokens.value = 2
    shown = board.generate()
    tiny_trace.save(tmp_path / "t.trace")
    data = (tmp_path / "t.trace").read_bytes()
    assert len(data) > 10_000
    board.upload.value = ({"name": "big.trace", "content": memoryview(data), "size": len(data), "type": "",
                           "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    assert f"big.trace is {len(data) / 1e3:.1f} kB; this dashboard takes trace files up to 10.0 kB" in message(board)
    assert "ae-error" in message(board) and board.trace is shown
    assert board.upload.value == ()  # and the upload is let go


def test_the_dashboard_drives_the_textbook_model_too():
    """Every model the dashboard can drive takes the same keywords (the DrivableModel protocol)."""
    from explorer import textbook

    lm = textbook.load()
    board = Dashboard(lm, prompt="3 1 4 1 5 |")
    assert board.chat.disabled and not board.chat.value  # no chat template
    board.max_new_tokens.value = 5
    trace = board.generate()
    assert trace is not None, board.message.value
    assert trace.tokens[trace.n_prompt:] == ["3", "1", "4", "1", "5"]  # the copy model copies
    assert board.progress.value == 5 and board.live.value == "31415"  # each token shown as it came
