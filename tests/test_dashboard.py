"""The dashboard's logic without a browser: generate, errors that lose nothing, load, save, views released; the
session of traces (generated, branched, run with heads off, loaded), Compare and Save session."""

import datetime
import os
from pathlib import Path

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


def test_a_model_without_a_lens_generates_and_the_message_says_why():
    """A model whose final norm feeds lm_head through a hook on the base model: no lens; the message says so."""
    lm = make_tiny_lm("llama")

    def doubled(module, args, output):
        output.last_hidden_state = output.last_hidden_state * 2
        return output

    lm.model.model.register_forward_hook(doubled)
    board = Dashboard(lm, prompt="abc")
    board.max_new_tokens.value = 3
    trace = board.generate()
    assert trace is not None and trace.lens is None
    assert "No logit lens" in message(board) and "ae-info" in message(board)


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

    board = Dashboard(make_tiny_lm("llama"), prompt="abc", session_traces=1)  # the session keeps only the newest
    board.max_new_tokens.value = 2
    old_trace = weakref.ref(board.generate())
    for index in range(len(board.explorer.tabs.children)):  # open every view
        board.explorer.tabs.selected_index = index
    assert all(box.children for box in board.explorer.tabs.children)
    old_views = [weakref.ref(box.children[0]) for box in board.explorer.tabs.children]
    board.generate()
    gc.collect()
    assert all(view() is None or view().comm is None for view in old_views)  # closed (a widget's registry holds it)
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


# --- what-if, the session, Compare, Save session

def upload(board, name: str, data: bytes) -> None:
    board.upload.value = ({"name": name, "content": memoryview(data), "size": len(data), "type": "",
                           "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def listed(board) -> list[str]:
    """The session list's labels, newest first, as the sidebar shows them."""
    return [label for label, _ in board.session_panel.list.options]


def runner_up(step):
    return next(c for c in step.top_k if c.token_id != step.token_id)


def branch(board, step: int):
    """Branch the shown trace at `step` with the runner-up candidate, as a click in the stepper does."""
    board.explorer.branch(step, runner_up(board.trace.steps[step]))
    assert board.explorer.whatif.wait(60)
    return board.trace


def test_generated_branched_and_heads_off_traces_join_the_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm = make_tiny_lm("llama")
    board = Dashboard(lm, prompt="The cat sat on the mat and purred")
    board.max_new_tokens.value = 6
    first = board.generate()
    assert listed(board) == ["1. The cat sat on the …"]
    assert board.session_panel.list.value == first.id and "(6 generated)" in board.session_panel.detail.value
    made = branch(board, 2)
    assert made is not first and made.parent is first and made.branch_step == 2
    label = f"2. The cat sat … · branch at step 2: “{made.steps[2].token.replace(' ', '␣')}”"
    assert listed(board) == [label, "1. The cat sat on the …"]
    assert board.session_panel.list.value == made.id  # the list follows what is shown
    assert "Added to the session: 2." in message(board)
    assert (board.session_panel.a.value, board.session_panel.b.value) == (first.id, made.id)  # A its parent
    assert board.progress_label.value.startswith("branching at step 2: done")  # its progress shows here too

    board.explorer.whatif.switch_off(1, 2)  # a head off, then a run with it off
    assert board.explorer.whatif.wait(60)
    board.explorer.whatif.generate_with_heads_off()
    assert board.explorer.whatif.wait(60)
    assert listed(board)[0] == "3. The cat sat … · heads off L1.H2"
    assert [tuple(pair) for pair in board.trace.settings["ablate"]] == [(1, 2)]

    board.prompt.value = "Another prompt"
    second = board.generate()
    assert listed(board)[0] == "4. Another prompt" and board.explorer.family == [second]  # a new family
    board.session_panel.list.value = made.id  # a click in the list: the branch, with its family in the tree
    assert board.trace is made and board.explorer.selection.step == 2
    assert {t.id for t in board.explorer.family} == {first.id, made.id, board.session.entries[2].trace.id}
    assert "Showing 2." in message(board)
    assert explorer.load_trace(board.save()).token_ids == made.token_ids  # Save trace: the trace shown


def test_compare_shows_the_two_traces_chosen_and_back_shows_the_explorer():
    from explorer.views.whatif.compare_view import CompareView

    lm = make_tiny_lm("llama")
    board = Dashboard(lm, prompt="abcdefgh")
    board.max_new_tokens.value = 5
    first = board.generate()
    made = branch(board, 1)
    board.prompt.value = "xyz"
    third = board.generate()
    panel = board.session_panel
    panel.a.value, panel.b.value = first.id, made.id
    panel.compare_button.click()
    view = board.session_panel.compare_view
    assert isinstance(view, CompareView) and (view.a, view.b) == (first, made)
    assert "B is a branch of A at step 1." in view.sentence
    assert panel.compare_box.layout.display == "" and board.explorer.layout.display == "none"
    assert "Comparing A, 1. abcdefgh, with B, 2." in message(board)
    assert board.trace is third  # the explorer is left as it was
    panel.back_button.click()
    assert panel.compare_view is None and view.comm is None  # closed: its arrays go
    assert panel.compare_box.layout.display == "none" and board.explorer.layout.display == ""
    panel.a.value = panel.b.value = first.id
    panel.compare_button.click()
    assert "A and B are the same trace" in message(board) and "ae-error" in message(board)
    assert panel.compare_view is None


def test_save_session_gives_one_file_that_loads_back_with_parents_linked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm = make_tiny_lm("gpt2")
    board = Dashboard(lm, prompt="abcdef")
    board.max_new_tokens.value = 4
    first = board.generate()
    made = branch(board, 1)
    path = board.save_session()
    assert path.name.startswith("session-") and "(2 traces)" in message(board)
    assert "download=" in board.links.value
    loaded = explorer.load_traces(path)
    assert [t.id for t in loaded] == [first.id, made.id]
    assert loaded[1].parent is loaded[0] and loaded[1].branch_step == 1

    # in a class, a download only, nothing written on the server
    from explorer.service import Limits

    klass = Dashboard(lm, prompt="abcdef", limits=Limits.for_class(3))
    klass.max_new_tokens.value = 4
    klass.generate()
    branch(klass, 2)
    before = set(tmp_path.iterdir())
    assert klass.save_session() is None and set(tmp_path.iterdir()) == before
    assert "Your session (2 traces) is ready to download" in message(klass)
    assert "download='session-" in klass.links.value


def test_a_tree_file_uploaded_adds_all_its_traces_and_shows_the_first(tmp_path):
    from explorer.trace import traces_to_bytes

    lm = make_tiny_lm("llama")
    trace = lm.generate("abcdef", max_new_tokens=4, progress=False)
    one = lm.branch(trace, 1, runner_up(trace.steps[1]), progress=False)
    two = lm.branch(one, 3, runner_up(one.steps[3]), progress=False)
    data = traces_to_bytes([trace, one, two])
    board = Dashboard(lm, prompt="abc")
    board.max_new_tokens.value = 2
    board.generate()
    upload(board, "tree.trace", data)
    assert "Loaded tree.trace: 3 traces, shown as a tree" in message(board), message(board)
    assert board.trace.id == trace.id and [t.id for t in board.explorer.family] == [trace.id, one.id, two.id]
    assert board.explorer.family[2].parent is board.explorer.family[1]  # parents linked
    assert listed(board)[:3] == [f"4. tree.trace · branch at step 3: “{two.steps[3].token}”",
                                 f"3. tree.trace · branch at step 1: “{one.steps[1].token}”", "2. tree.trace"]
    assert not board.explorer.tree.layout.display  # the tree shows above the tabs
    # a file of one trace still loads as before; one the session has already is shown, not added twice
    upload(board, "one.trace", lm.generate("xyz", max_new_tokens=2, progress=False).to_bytes())
    assert "Loaded one.trace: " in message(board) and listed(board)[0] == "5. one.trace"
    upload(board, "again.trace", one.to_bytes())
    assert len(board.session) == 5 and board.trace.id == one.id and len(board.explorer.family) == 3


def test_the_session_is_bounded_and_says_what_it_let_go():
    lm = make_tiny_lm("llama")
    board = Dashboard(lm, prompt="p0", session_traces=3)
    board.max_new_tokens.value = 2
    made = []
    for i in range(3):
        board.prompt.value = f"p{i}"
        made.append(board.generate())
    assert len(board.session) == 3 and "let go" not in message(board)
    board.prompt.value = "p3"
    board.generate()
    assert len(board.session) == 3 and [e.trace for e in board.session.entries][0] is made[1]
    assert "The session keeps at most 3 traces" in message(board) and "the oldest, “1. p0”, was let go" in message(board)
    assert listed(board) == ["4. p3", "3. p2", "2. p1"]
    # a branch keeps its parent's id but lets the parent's memory go with it
    board.session_panel.list.value = made[1].id
    child = branch(board, 1)
    for _ in range(3):
        board.generate()
    assert child.parent is None and child.parent_id == made[1].id


def test_a_service_error_in_a_what_if_action_is_one_sentence_and_the_trace_stays():
    from explorer.errors import ServiceError

    lm = make_tiny_lm("llama")

    class FailingService:
        """The tiny model for Generate, a generation service that has stopped for what-if."""

        has_chat_template = False

        def generate(self, *args, **kwargs):
            return lm.generate(*args, **kwargs)

        def generate_from_ids(self, *args, **kwargs):
            raise ServiceError("the generation service stopped answering (it restarts by itself): "
                               "your last trace is still shown; press Generate again in a few seconds")

        def branch(self, trace, step, token, **kwargs):
            return self.generate_from_ids([], forced=token)

    board = Dashboard(FailingService(), prompt="abcdef")
    board.max_new_tokens.value = 4
    shown = board.generate()
    board.explorer.branch(1, runner_up(shown.steps[1]))
    assert board.explorer.whatif.wait(30)
    assert "The generation service stopped answering" in message(board) and "ae-error" in message(board)
    assert message(board).count(". ") == 0  # one sentence
    assert board.trace is shown and len(board.session) == 1 and board.progress_label.value == ""
    assert not board.generate_button.disabled and board.generate() is not None  # and Generate still works


def test_generate_waits_for_a_what_if_request_of_the_same_model():
    """The dashboard's Generate and the explorer's background what-if take turns: a service's socket and a
    model's hooks take one call at a time."""
    import threading

    lm = make_tiny_lm("llama")
    board = Dashboard(lm, prompt="abcdef")
    board.max_new_tokens.value = 3
    board.generate()
    calls, inside = [], threading.Event()
    release = threading.Event()
    real = lm.branch

    def slow_branch(*args, **kwargs):
        calls.append("branch in")
        inside.set()
        release.wait(30)
        calls.append("branch out")
        return real(*args, **kwargs)

    lm.branch = slow_branch
    board.explorer.branch(1, runner_up(board.trace.steps[1]))
    assert inside.wait(30)
    real_generate = lm.generate
    lm.generate = lambda *a, **k: (calls.append("generate"), real_generate(*a, **k))[1]
    threading.Timer(0.5, release.set).start()
    board.generate()
    assert calls == ["branch in", "branch out", "generate"]
    assert board.explorer.whatif.wait(30)


def test_a_model_that_cannot_branch_gives_an_explorer_without_what_if():
    from explorer import textbook

    board = Dashboard(textbook.load(), prompt="3 1 4 |")
    assert board.explorer.whatif is None
    board.max_new_tokens.value = 3
    board.generate()
    assert listed(board) == ["1. 3 1 4 |"]


def test_what_if_on_a_trace_of_another_model_is_refused_in_a_sentence():
    board = Dashboard(make_tiny_lm("llama"), prompt="abcdef")
    other = make_tiny_lm("gpt2").generate("abcdef", max_new_tokens=3, progress=False)
    upload(board, "gpt2.trace", other.to_bytes())
    shown = board.trace
    board.explorer.branch(1, runner_up(shown.steps[1]))
    assert board.explorer.whatif.wait(30)
    assert "This trace was written by tiny-gpt2, not by the dashboard&#x27;s model (tiny-llama)" in message(board)
    assert board.trace is shown and len(board.session) == 1
    board.explorer.whatif.switch_off(0, 1)  # re-scoring asks the model too
    assert board.explorer.whatif.wait(30) and board.explorer.whatif.after is None
    assert "written by tiny-gpt2" in message(board)


def test_the_stepper_and_heatmap_are_drawn_before_the_lens_is_read(monkeypatch):
    """Generate shows the trace as soon as its capture is done; the Logit lens tab says the lens is coming, then
    draws it when it has come, and the stepper drawn before it stays."""
    import threading

    from explorer.capture import language_model
    from explorer.views.meaning.lens_view import PENDING, LensView

    lm = make_tiny_lm("llama")
    board = Dashboard(lm, prompt="abcdef")
    board.max_new_tokens.value = 4
    entered, release = threading.Event(), threading.Event()
    real = language_model.build_lenses

    def held(*args, **kwargs):  # the lens waits until the test has looked at the page
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(language_model, "build_lenses", held)
    done = []
    worker = threading.Thread(target=lambda: done.append(board.generate()))
    worker.start()
    try:
        assert entered.wait(60), "the lens was never read"
        shown = board.trace  # what the page shows while the lens is read
        assert shown is not None and shown.lens is None and shown.lens_pending and shown.n_generated == 4
        stepper = board.explorer.tabs.children[0].children[0]
        assert stepper.trace is shown
        assert "the logit lens is being read" in message(board)
        assert "being read" in stepper.commitment.value  # the commitment strip waits for the lens
        board.explorer.show_tab("Heatmap")
        assert board.explorer.tabs.children[1].children  # drawn while the lens is read
        board.explorer.show_tab("Logit lens")
        [box] = board.explorer.tabs.children[board.explorer.tabs.selected_index].children
        [waiting] = [w for w in box.children if isinstance(w, LensView)]  # beside the commitment strip
        assert waiting.message == PENDING
    finally:
        release.set()
        worker.join(60)
    [trace] = done
    assert trace is shown and trace.lens is not None and not trace.lens_pending
    [box] = board.explorer.tabs.children[board.explorer.tabs.selected_index].children
    [drawn] = [w for w in box.children if isinstance(w, LensView)]
    assert drawn is not waiting and drawn.message == "" and drawn.n_layers == 2
    assert board.explorer.tabs.children[0].children[0] is stepper  # not drawn again
    assert "being read" not in stepper.commitment.value and stepper.commitment.layers  # its strip came with the lens
    assert "Generated 4 tokens" in message(board) and "being read" not in message(board)
    assert len(board.session_panel.session.entries) == 1  # one trace in the session, not two


# --- the service's first trace against the student's own Generate
class ServiceDouble:
    """Stands for the generation service: as the dashboard's model it generates with a tiny model here; as the
    first-trace thread's own connection (client.RemoteModel) it is ready and hands over `first`."""

    address, key, server_key, has_chat_template = "tcp://127.0.0.1:1", "", None, False

    def __init__(self, lm, first, first_at_once=False):
        self.lm, self.first, self.first_at_once, self.facts = lm, first, first_at_once, first.model

    def generate(self, prompt, *args, **kwargs):
        return self.lm.generate(prompt, *args, **kwargs)

    def first_trace(self, timeout=3.0):
        return self.first if self.first_at_once else None  # the page's own first ask: not ready yet

    def connection(self, address, key="", server_key=None):
        from explorer.service.protocol import ServiceStatus

        double = self

        class Connection:
            facts = double.first.model

            def status(self, timeout=3.0):
                return ServiceStatus(state="ready", percent=100, stage="ready")

            def first_trace(self, timeout=3.0):
                return double.first

            def close(self):
                pass

        return Connection()


def test_a_first_trace_that_comes_after_a_generate_does_not_replace_it():
    """The page's first drawing (PageReady) can come after a student's Generate: the first trace does not cover it."""
    lm = make_tiny_lm("llama")
    first = lm.generate("abc", 3, progress=False)
    board = Dashboard(ServiceDouble(lm, first, first_at_once=True), prompt="hello")
    board.max_new_tokens.value = 4
    own = board.generate()
    board.open_first_trace(first)
    assert board.trace is own and "Generated 4 tokens" in message(board)


def test_the_first_trace_thread_and_a_generate_pressed_meanwhile_take_turns(monkeypatch):
    """Forced interleaving: the first-trace thread has found the page empty and is about to show the first trace
    when the student presses Generate. The Generate waits for the model's turn and its trace is the one shown; the
    first trace stays in the session under it (never shown over the student's own)."""
    import threading

    from explorer.service import client

    lm = make_tiny_lm("llama")
    first = lm.generate("abc", 3, progress=False)
    double = ServiceDouble(lm, first)
    monkeypatch.setattr(client, "RemoteModel", double.connection)
    board = Dashboard(double, prompt="hello")
    board.max_new_tokens.value = 4
    about_to_show, go, settled, background = threading.Event(), threading.Event(), threading.Event(), []

    def hold(change):  # the first-trace thread, between its check and its show_trace
        if threading.current_thread().name == "first trace" and change["new"] == "":
            background.append(threading.current_thread())
            about_to_show.set()
            assert go.wait(30)
        elif change["new"].startswith("waiting for the model"):  # the Generate waits for its turn
            settled.set()

    board.progress_label.observe(hold, "value")
    board.open_first_trace()
    assert about_to_show.wait(30), board.progress_label.value
    results = []

    def press():
        try:
            results.append(board.generate())
        finally:
            settled.set()

    student = threading.Thread(target=press)
    student.start()
    assert settled.wait(30)  # the Generate either ran to its end or waits for the model
    go.set()
    student.join(30)
    background[0].join(30)
    assert not student.is_alive() and not background[0].is_alive()
    own = results[0]
    assert own is not None and own.n_generated == 4
    assert board.trace is own, "the first trace was shown over the student's own"
    assert "Generated 4 tokens" in message(board) and not board.generate_button.disabled
    assert [e.trace for e in board.session.entries] == [first, own]
