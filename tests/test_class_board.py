"""Show to the class: a teacher's trace reaches every student's session through the generation service, exactly
(against the trace the teacher shows), and nobody but the teacher can publish."""

from __future__ import annotations

import html

import numpy as np
import pytest

from explorer.dashboard import Dashboard
from explorer.dashboard.class_link import ClassLink, teacher_key_in
from explorer.errors import ServiceError, SettingsError, TraceFileError
from explorer.service import Limits, RemoteModel
from explorer.service import protocol as p
from explorer.service.board import ClassBoard
from test_service import service_in_this_process, until

TEACHER = "the-teacher's-key"


def same_trace(got, want) -> None:
    assert got.id == want.id and got.token_ids == want.token_ids and got.n_prompt == want.n_prompt
    for layer in range(want.n_layers):
        for head in range(want.n_heads):
            np.testing.assert_array_equal(got.attention(layer, head), want.attention(layer, head))
    assert [s.prob for s in got.steps] == [s.prob for s in want.steps]


def said(board) -> str:
    """The dashboard's message line, as the page shows it."""
    return html.unescape(board.message.value)


@pytest.fixture(scope="module")
def tiny_lm():
    from conftest import make_tiny_lm

    return make_tiny_lm("llama")


@pytest.fixture(scope="module")
def traces(tiny_lm):
    return [tiny_lm.generate(text, max_new_tokens=4, progress=False) for text in ("one", "two", "three")]


@pytest.fixture(scope="module")
def class_service(tiny_lm):
    """A class of 3 on a service in this process, with the tiny Llama and the teacher's key TEACHER."""

    def load(service):
        service.lm = tiny_lm
        service.status.model = tiny_lm.info().to_dict()
        service.first_trace = tiny_lm.generate("abc", 3, progress=False).to_bytes()
        service.status.state = "ready"

    with service_in_this_process(load, key="k", limits=Limits.for_class(3), teacher_key=TEACHER) as (address, service):
        until(lambda: service.status.ready, "the service did not load")  # the model is not shared while it loads
        yield address


# --- the board alone
def test_the_board_keeps_the_last_few_traces_the_teacher_shows(traces):
    board = ClassBoard(TEACHER, max_shown=2)
    first = board.publish(TEACHER, "  the  first\none ", traces[0].to_bytes())
    assert (first.number, first.trace_id, first.title) == (1, traces[0].id, "the first one")
    board.publish(TEACHER, "", traces[1].to_bytes())  # no title: its prompt's text
    board.publish(TEACHER, "third", traces[2].to_bytes())
    assert [s.trace_id for s in board.listing()] == [traces[1].id, traces[2].id]  # the oldest let go
    assert board.listing()[0].title == traces[1].prompt_text
    sent = traces[1].to_bytes()
    again = board.publish(TEACHER, "again", sent)  # shown again: once, newest
    assert [s.trace_id for s in board.listing()] == [traces[2].id, traces[1].id] and again.number == 4
    shown, data = board.get(4)
    assert data == sent and shown == again
    with pytest.raises(Exception, match="no longer kept"):
        board.get(1)


def test_the_board_refuses_anyone_but_the_teacher_and_what_is_not_one_trace(traces):
    data = traces[0].to_bytes()
    with pytest.raises(SettingsError, match="no class"):
        ClassBoard("").publish("", "x", data)
    board = ClassBoard(TEACHER, max_bytes=len(data) - 1)
    for key in (None, "", "guess", TEACHER + "x", 7):
        with pytest.raises(SettingsError, match="only the teacher"):
            board.publish(key, "x", data)
    with pytest.raises(SettingsError, match="at most"):
        board.publish(TEACHER, "x", data)
    board.max_bytes = 10**9
    with pytest.raises(TraceFileError):
        board.publish(TEACHER, "x", data[: len(data) // 2])
    assert board.listing() == []


def test_the_teachers_key_is_read_from_the_page_address():
    assert teacher_key_in("?token=abc&teacher=K-1_x") == "K-1_x"
    assert teacher_key_in("?token=abc") is None and teacher_key_in("") is None and teacher_key_in("?teacher=") is None


# --- through the service
def test_students_get_exactly_the_trace_the_teacher_shows_and_cannot_publish(class_service, traces, tiny_lm):
    address = class_service
    teacher, student = RemoteModel(address, "k"), RemoteModel(address, "k")
    assert teacher.is_teacher(TEACHER) and not student.is_teacher("guess")
    # a trace bigger than any request the service takes from a student (its prompt is at most 100,000 characters)
    big = tiny_lm.generate("x" * 100, max_new_tokens=20, progress=False, keep_values=True, lens="all", candidates=200)
    assert len(big.to_bytes()) > p.MAX_REQUEST_BYTES
    shown = teacher.publish(big, TEACHER, "a long one")
    assert shown.trace_id == big.id and shown.title == "a long one"
    listed = student.class_traces()
    assert [s.trace_id for s in listed] == [big.id]
    got_shown, got = student.class_trace(listed[0].number)
    assert got_shown == shown
    same_trace(got, big)
    with pytest.raises(SettingsError, match="only the teacher"):
        student.publish(traces[0], "guess")
    with pytest.raises(ServiceError, match="no longer kept"):
        student.class_trace(999)
    assert [s.trace_id for s in student.class_traces()] == [big.id]  # nothing of the student's reached it
    wrong = RemoteModel(address, "not the class key")
    with pytest.raises(ServiceError, match="wrong key"):
        wrong.class_traces()
    for lm in (teacher, student, wrong):
        lm.close()


def test_a_service_without_a_class_shows_nothing(traces):
    def load(service):
        service.status.state = "ready"

    with service_in_this_process(load) as (address, _):
        lm = RemoteModel(address)
        assert not lm.is_teacher("")
        with pytest.raises(SettingsError, match="no class"):
            lm.publish(traces[0], "")
        assert lm.class_traces() == []
        lm.close()


def test_a_class_link_hands_each_new_trace_over_once_and_skips_the_pages_own(class_service, traces):
    teacher = RemoteModel(class_service, "k")
    got, own = [], {traces[1].id}
    link = ClassLink(teacher, lambda shown, trace: got.append(trace), seen=lambda i: i in own)
    for trace in traces:
        teacher.publish(trace, TEACHER)
    link.check()
    kept = [s.trace_id for s in teacher.class_traces()]  # oldest first, with what earlier tests showed
    assert kept[-3:] == [t.id for t in traces]
    assert [t.id for t in got] == [i for i in kept if i not in own]  # the page's own (traces[1]) is not fetched
    same_trace(got[-1], traces[2])
    assert link.check() == [] and len(got) == len(kept) - 1
    teacher.close()


# --- two dashboards: the teacher's and a student's
def test_the_teacher_shows_a_trace_and_it_joins_the_students_session_by_itself(class_service):
    limits = Limits.for_class(3)
    teacher = Dashboard(lm=RemoteModel(class_service, "k"), limits=limits)
    student = Dashboard(lm=RemoteModel(class_service, "k"), limits=limits)
    for board in (teacher, student):
        board.join_class()
        board.class_link.poll_seconds = 0.1
    assert teacher.teacher_box.layout.display == "none"
    assert not teacher.become_teacher("guess")
    assert "not this class's" in said(teacher) and teacher.teacher_box.layout.display == "none"
    assert teacher.show_to_class() is None and "Only the teacher" in said(teacher)
    assert teacher.become_teacher(TEACHER) and teacher.teacher_box.layout.display == ""

    teacher.prompt.value, student.prompt.value = "Teacher's example", "A student's own"
    teacher.chat.value = student.chat.value = False
    mine, theirs = teacher.generate(), student.generate()
    assert mine is not None and theirs is not None
    shown = teacher.show_to_class()
    assert shown is not None and "every student's session list" in said(teacher)
    until(lambda: student.session.get(mine.id) is not None, "the student's session never got the teacher's trace")
    entry = student.session.get(mine.id)
    assert "teacher · Teacher's example" in entry.label and entry.source == "from the teacher"
    same_trace(entry.trace, mine)
    assert student.trace is theirs  # the student's own trace stays shown
    assert "The teacher showed the class" in said(student)
    assert student.session_panel.list.options[0] == (entry.label, mine.id)  # in the list, newest first
    student.session_panel.show(mine.id)  # a click explores it
    assert student.trace is entry.trace
    # the teacher's page has it once; no student's trace went anywhere
    assert [e.trace.id for e in teacher.session.entries].count(mine.id) == 1
    assert student.show_to_class() is None
    assert theirs.id not in [s.trace_id for s in teacher.class_link.remote.class_traces()]
    for board in (teacher, student):
        board.class_link.stop()
