"""The `attention-explorer` command: trace a prompt, run the benchmark, start the dashboard."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ExplorerError
from .service.protocol import KEY_ENV, PUBLIC_KEY_ENV


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Hugging Face id or local folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 elsewhere), float32, float16, bfloat16")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attention-explorer", description="Look inside a GPT while it writes.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trace", help="generate from a prompt, print each token's probability, save the trace")
    t.add_argument("prompt")
    _add_model_arguments(t)
    t.add_argument("--max-new-tokens", type=int, default=20)
    t.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    t.add_argument("--top-k", type=int, default=None)
    t.add_argument("--top-p", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    t.add_argument("--candidates", type=int, default=10, help="top tokens kept per step (default 10)")
    t.add_argument("--precision", default="auto", choices=["auto", "float32", "float16"])
    t.add_argument("-o", "--output", type=Path, default=None, help="write the trace to this file")

    b = sub.add_parser("bench", help="capture overhead, trace memory and load time on the default model")
    b.add_argument("--repeats", type=int, default=3)

    d = sub.add_parser("dashboard", help="start the Voilà dashboard (other flags go to Voilà)")
    _add_model_arguments(d)
    d.add_argument("--trace", type=Path, default=None, help="show a saved trace; no model is loaded")
    d.add_argument("--class", dest="class_size", type=_positive, default=None, metavar="N",
                   help="serve a class of N students: listens on every address with a token, caps requests")
    d.add_argument("--service", default=None, metavar="ADDRESS",
                   help="use a generation service already running (attention-explorer serve), e.g. tcp://gpu:5555; "
                        f"its key goes in ${KEY_ENV}")
    d.add_argument("--service-public-key", default=None, metavar="KEY",
                   help=f"the public key that service printed (or ${PUBLIC_KEY_ENV}): the connection is encrypted")
    d.add_argument("--threads", type=_positive, default=None,
                   help="the generation service's torch CPU threads (default: half the cores)")
    d.add_argument("--port", type=int, default=8866)
    d.add_argument("--ip", default=None,
                   help="address to listen on (default: 127.0.0.1, this machine only; with --class: 0.0.0.0)")

    v = sub.add_parser("serve", help="run the generation service alone (for a dashboard on another machine)")
    _add_model_arguments(v)
    v.add_argument("--bind", default="tcp://127.0.0.1:5555",
                   help="ZeroMQ address to listen on (default tcp://127.0.0.1:5555; tcp://0.0.0.0:5555 for every address)")
    v.add_argument("--class", dest="class_size", type=_positive, default=None, metavar="N",
                   help="cap requests as for a class of N students")
    v.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads (default: half the cores; one thread is 2x faster on a busy 2-core machine)")
    v.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help="the most waiting requests one generate call takes (default: 8 for a class, measured on a "
                        "2-core CPU; 1 without --class); a GPU takes more")
    v.add_argument("--key-file", type=Path, default=None, metavar="PATH",
                   help="the service's CURVE key pair, a ZeroMQ secret certificate only you may read (made there if "
                        "absent), so that its public key stays the same between starts (default: a new pair each "
                        "start)")
    v.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    v.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # a socket bound by the dashboard

    sub.add_parser("singleuser", help="a student's server under JupyterHub: the spawner's command, showing the "
                   "dashboard through Voilà (other flags go to jupyterhub-singleuser)")

    s = sub.add_parser("show", help="print a summary of a saved trace")
    s.add_argument("path", type=Path)
    return parser


def _print_trace(trace, seconds: dict) -> None:
    m = trace.model
    heads = f"{m.heads} heads" + (f" ({m.kv_heads} kv)" if m.kv_heads != m.heads else "")
    size = f"{m.parameters / 1e6:.0f}M params, " if m.parameters else ""
    print(f"model    {m.name} ({m.architecture}, {size}{m.layers} layers x {heads}, "
          f"{trace.positional.kind} positions) on {m.device}, {m.dtype}")
    print(f"prompt   {trace.prompt_text!r} ({trace.n_prompt} tokens)")
    if trace.steps:
        width = max(8, *(len(repr(s.token)) for s in trace.steps))
        print(f"\n{'step':>4}  {'token':<{width}}  {'prob':>7}  {'rank':>5}  {'entropy':>7}  {'top alternative':<20}")
        for s in trace.steps:
            other = next((c for c in s.top_k if c.token_id != s.token_id), None)
            alt = f"{other.token!r} {other.prob:.3f}" if other else ""
            print(f"{s.index + 1:>4}  {s.token!r:<{width}}  {s.prob:>7.4f}  {s.rank:>5}  {s.entropy:>7.3f}  {alt}")
        print(f"\ntext     {trace.text!r}")
    timing = " . ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
    if trace.steps and "generate" in trace.timings:
        timing += f" ({trace.n_generated / trace.timings['generate']:.1f} tok/s)"
    print(f"time     {timing}")
    print(f"trace    {trace.n_tokens} tokens, {trace.n_layers} layers x {trace.n_heads} heads, "
          f"{trace.nbytes / 1e6:.1f} MB held ({trace.settings.get('precision', '?')} queries and keys)")


def _trace_command(args) -> None:
    import explorer
    from .capture.settings import GenerationSettings

    # check what can be checked before spending seconds on loading the model
    GenerationSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    if not args.prompt:
        raise explorer.SettingsError("the prompt is empty: type some text")
    started = time.perf_counter()
    lm = explorer.load_model(args.model, device=args.device, dtype=args.dtype)
    loaded = time.perf_counter() - started
    trace = lm.generate(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
        candidates=args.candidates,
        precision=args.precision,
    )
    _print_trace(trace, {"load": loaded, "generate": trace.timings["total"]})
    if args.output:
        trace.save(args.output)
        print(f"saved    {args.output}")


def _show_command(args) -> None:
    from .trace_file import load_trace

    trace = load_trace(args.path)
    _print_trace(trace, dict(trace.timings))


def _serve_command(args) -> None:
    import os
    import re
    import secrets
    import socket

    from .service.keys import service_key_pair
    from .service.protocol import KEY_ENV, TEACHER_KEY_ENV, Limits, is_loopback
    from .service.server import GenerationService

    pair = service_key_pair(args.key_file)  # a bad key file is refused before anything starts
    if args.parent_pid is None:  # a dashboard that starts its own service hands the key to its kernels itself
        kept = f"kept in {args.key_file}" if args.key_file else "new at every start: --key-file PATH keeps one"
        address = re.sub(r"//(0\.0\.0\.0|\*|\[::\]):", f"//{socket.gethostname()}:", args.bind)
        print(f"encrypted: clients need the service's public key {pair.public} ({kept}); give it as\n"
              f"  attention-explorer dashboard --service {address} --service-public-key '{pair.public}'\n"
              f"  or {PUBLIC_KEY_ENV}='{pair.public}'", flush=True)
    key = os.environ.get(KEY_ENV, "")
    if not key and not is_loopback(args.bind):
        key = secrets.token_urlsafe(16)
        print(f"listening beyond this machine: requests must carry the key {key} "
              f"(give it to the dashboard as ${KEY_ENV})", flush=True)
    limits = Limits.for_class(args.class_size) if args.class_size else Limits()
    teacher = ""
    if args.class_size:  # the teacher's key shows traces to the class; a dashboard that starts us hands us its own
        teacher = os.environ.get(TEACHER_KEY_ENV) or secrets.token_urlsafe(18)
        if not os.environ.get(TEACHER_KEY_ENV):
            print(f"the teacher's key (keep it to yourself): {teacher}; the teacher opens the dashboard with "
                  f"?teacher={teacher} after its address", flush=True)
    service = GenerationService(args.bind, model=args.model, limits=limits, key=key, device=args.device,
                                dtype=args.dtype, parent_pid=args.parent_pid, threads=args.threads,
                                batch_size=args.batch_size, secret_key=pair.secret, listen_fd=args.listen_fd,
                                teacher_key=teacher)
    service.run()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in {"dashboard", "singleuser"}:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "trace":
            _trace_command(args)
        elif args.command == "show":
            _show_command(args)
        elif args.command == "bench":
            from .bench import run_benchmark

            run_benchmark(repeats=args.repeats)
        elif args.command == "dashboard":
            from .dashboard.launch import launch

            return launch(args, voila_args=rest)
        elif args.command == "serve":
            _serve_command(args)
        elif args.command == "singleuser":
            from .dashboard.singleuser import main as singleuser

            return singleuser(rest)
    except ExplorerError as e:
        print(f"attention-explorer: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
