"""Saving and loading traces: everything kept, and every kind of bad file refused with our one error type."""

import json
import pickle
import struct

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import explorer
from explorer import TraceFileError
from explorer.trace_file import FORMAT, VERSION, trace_from_bytes
from conftest import run_without_torch


def assert_same_trace(a, b):
    assert a.tokens == b.tokens and a.token_ids == b.token_ids and a.pieces == b.pieces
    assert a.n_prompt == b.n_prompt and a.n_layers == b.n_layers and a.n_heads == b.n_heads
    assert a.steps == b.steps
    assert a.model == b.model and a.settings == b.settings and a.timings == b.timings
    assert a.positional.kind == b.positional.kind and a.positional.params == b.positional.params
    assert a.positional.description == b.positional.description
    assert a.positional.arrays.keys() == b.positional.arrays.keys()
    for name in a.positional.arrays:
        np.testing.assert_array_equal(a.positional.arrays[name], b.positional.arrays[name])
    for la, lb in zip(a.layers, b.layers):
        assert la.meta() == lb.meta()
        for name, array in la.tensors().items():
            np.testing.assert_array_equal(array, lb.tensors()[name])
    for layer in range(a.n_layers):
        np.testing.assert_array_equal(a.attention(layer), b.attention(layer))


def test_round_trip_keeps_everything(tiny_trace, tmp_path):
    path = tmp_path / "run.trace"
    tiny_trace.save(path)
    assert_same_trace(tiny_trace, explorer.load_trace(path))
    assert not (tmp_path / "run.trace.partial").exists()


def test_round_trip_of_weights_layers_and_values(tmp_path):
    from conftest import make_tiny_lm

    for arch, kwargs in [("gpt_neo", {}), ("llama", {"keep_values": True})]:
        trace = make_tiny_lm(arch).generate("<b>&</b>", max_new_tokens=4, progress=False, **kwargs)
        trace.save(tmp_path / f"{arch}.trace")
        assert_same_trace(trace, explorer.load_trace(tmp_path / f"{arch}.trace"))


def test_loading_a_trace_needs_no_torch(tiny_trace, tmp_path):
    run_without_torch(tiny_trace, tmp_path, "trace.attention(0, 0)")


def _header(trace_path):
    from safetensors import safe_open

    with safe_open(str(trace_path), framework="numpy") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(src, dst, change_header=None, change_tensors=None, change_meta=None):
    meta, tensors = _header(src)
    header = json.loads(meta["header"])
    if change_header:
        change_header(header)
    if change_tensors:
        change_tensors(tensors)
    meta = dict(meta, header=json.dumps(header))
    if change_meta:
        change_meta(meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('pickle ran')",))


def bad_files(good, d):
    """(name, path) of files that are not valid traces, each broken a different way."""
    data = good.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    files = {
        "empty": b"",
        "random bytes": np.random.default_rng(0).bytes(4096),
        "text": b"hello, this is not a trace\n",
        "json": json.dumps({"format": FORMAT, "version": 1}).encode(),
        "pickle": pickle.dumps(Boom()),
        "truncated in the length": data[:5],
        "truncated in the header": data[: 8 + header_len // 2],
        "truncated in the data": data[: len(data) - 100],
        "huge header length": struct.pack("<Q", 2**60) + data[8:],
        "header not json": data[:8] + b"{" * header_len + data[8 + header_len :],
    }
    out = []
    for name, content in files.items():
        path = d / (name.replace(" ", "_") + ".trace")
        path.write_bytes(content)
        out.append((name, path))
    out += [
        ("foreign safetensors", d / "foreign.safetensors"),
        ("future version", _rewrite(good, d / "future.trace", change_meta=lambda m: m.update(version=str(VERSION + 1)))),
        ("missing header key", _rewrite(good, d / "nokey.trace", change_header=lambda h: h.pop("tokens"))),
        ("header json broken", _rewrite(good, d / "badjson.trace", change_meta=lambda m: m.update(header="{oops"))),
        ("wrong step count", _rewrite(good, d / "steps.trace", change_header=lambda h: h["steps"].pop())),
        ("missing tensor", _rewrite(good, d / "notensor.trace", change_tensors=lambda t: t.pop("layers.0.attn.key"))),
        ("shape mismatch", _rewrite(good, d / "shape.trace",
                                    change_tensors=lambda t: t.update({"layers.1.attn.query": np.zeros((4, 3, 8), np.float32)}))),
        ("tokens not a list", _rewrite(good, d / "tokens.trace", change_header=lambda h: h.update(tokens=5))),
        ("unknown layer kind", _rewrite(good, d / "kind.trace",
                                        change_header=lambda h: h["layers"][0].update(kind="pickled"))),
        ("zero key heads", _rewrite(good, d / "zeroheads.trace",
                                    change_tensors=lambda t: t.update({"layers.0.attn.key": np.zeros((0, 23, 8), np.float32)}))),
        ("step at the wrong position", _rewrite(good, d / "steppos.trace",
                                                change_header=lambda h: h["steps"][0].update(position=0))),
        ("a folder", d),
        ("no such file", d / "missing.trace"),
    ]
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(d / "foreign.safetensors"))
    return out


def test_every_bad_file_raises_our_error_and_runs_nothing(tiny_trace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.trace"
    tiny_trace.save(good)
    (tmp_path / "bad").mkdir()
    cases = bad_files(good, tmp_path / "bad")
    assert len(cases) >= 12
    for name, path in cases:
        with pytest.raises(TraceFileError) as info:
            explorer.load_trace(path)
        assert str(path) in str(info.value), name
    assert not (tmp_path / "PWNED").exists()
    explorer.load_trace(good)  # the good one still loads


def test_future_version_error_says_to_upgrade(tiny_trace, tmp_path):
    good = tmp_path / "good.trace"
    tiny_trace.save(good)
    future = _rewrite(good, tmp_path / "future.trace", change_meta=lambda m: m.update(version="99"))
    with pytest.raises(TraceFileError, match="upgrade"):
        explorer.load_trace(future)


def _layer0(field, value):
    return lambda h: h["layers"][0].update({field: value})


@pytest.mark.parametrize("name,change_header,change_tensors", [
    ("sliding_window a string", _layer0("sliding_window", "4"), None),
    ("sliding_window zero", _layer0("sliding_window", 0), None),
    ("sliding_window a fraction", _layer0("sliding_window", 2.5), None),
    ("sliding_window true", _layer0("sliding_window", True), None),
    ("softcap a string", _layer0("softcap", "5"), None),
    ("softcap negative", _layer0("softcap", -5.0), None),
    ("softcap zero", _layer0("softcap", 0), None),
    ("softcap a list", _layer0("softcap", [5.0]), None),
    ("value of the wrong shape", None, lambda t: t.update({"layers.0.attn.value": np.zeros((2, 3, 8), np.float32)})),
    ("pieces not a list", lambda h: h.update(pieces="abc"), None),
    ("pieces too short", lambda h: h.update(pieces=h["pieces"][:-1]), None),
    ("pieces not strings", lambda h: h.update(pieces=[1] * len(h["pieces"])), None),
])
def test_bad_layer_fields_and_pieces_are_refused_at_load(tiny_trace, tmp_path, name, change_header, change_tensors):
    good = tmp_path / "good.trace"
    tiny_trace.save(good)
    bad = _rewrite(good, tmp_path / "bad.trace", change_header=change_header, change_tensors=change_tensors)
    with pytest.raises(TraceFileError, match="bad.trace"):
        explorer.load_trace(bad)
    with pytest.raises(TraceFileError, match="upload"):
        trace_from_bytes(bad.read_bytes(), name="upload")


def test_good_layer_fields_and_no_pieces_still_load(tiny_trace, tmp_path):
    good = tmp_path / "good.trace"
    tiny_trace.save(good)
    shape = tiny_trace.layers[0].key.shape
    fine = _rewrite(good, tmp_path / "fine.trace",
                    change_header=lambda h: (h["layers"][0].update(sliding_window=4, softcap=5),
                                             h.update(pieces=None)),
                    change_tensors=lambda t: t.update({"layers.0.attn.value": np.ones(shape, np.float32)}))
    trace = explorer.load_trace(fine)
    assert (trace.layers[0].sliding_window, trace.layers[0].softcap, trace.pieces) == (4, 5.0, None)
    assert trace.layers[0].value.shape == shape


def test_the_trace_writes_itself_and_the_loader_depends_on_it_not_the_other_way():
    import ast

    import explorer.trace

    tree = ast.parse(Path(explorer.trace.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "trace_file" not in imported and "explorer.trace_file" not in imported  # anywhere, lazily or not


def test_the_late_parts_sent_apart_read_back_onto_their_trace_and_bad_ones_are_refused(tiny_trace):
    """The service sends a trace before its lens, then the lens, attribution and notes alone: what the page's
    kernel puts together."""
    from dataclasses import replace

    from explorer.trace_file import add_late_parts

    assert tiny_trace.lens is not None and tiny_trace.attribution is not None
    early = replace(tiny_trace, lens=None, attribution=None, notes=[], timings={"generate": 1.0})
    add_late_parts(early, tiny_trace.late_bytes())
    for part in ("lens", "attribution"):
        for name, array in getattr(tiny_trace, part).tensors().items():
            np.testing.assert_array_equal(getattr(getattr(early, part), name), array)
    assert early.lens.words == tiny_trace.lens.words and early.notes == tiny_trace.notes
    assert early.timings == tiny_trace.timings | {"generate": tiny_trace.timings["generate"]}
    data = tiny_trace.late_bytes()
    shorter = replace(tiny_trace, layers=tiny_trace.layers[:1], lens=None, attribution=None)
    for bad in (b"", b"junk" * 10, data[:-9], tiny_trace.to_bytes(), pickle.dumps(tiny_trace.lens)):
        with pytest.raises(TraceFileError):
            add_late_parts(shorter, bad)
    with pytest.raises(TraceFileError, match="has shape"):
        add_late_parts(shorter, data)  # another trace's parts
    assert shorter.lens is None and shorter.attribution is None  # and the trace is left as it was
