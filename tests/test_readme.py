"""Every command the README and the docs/ pages show runs as written, on a small scale.

The commands are read from README.md and docs/*.md themselves (fenced bash blocks and inline code
starting with `vlaforge` or `torchrun`, and `python -m vlaforge.<module>` helpers, which run first; a
command shown twice runs once), so the pages cannot drift from the code. Each one is parsed by the real
`vlaforge` parser and its config built (a refused flag combination fails here), then run in a scratch
directory with only its sizes scaled down, as listed in `SCALE`: Meta-World's tasks become one easy task,
episode and step counts shrink (a collection that, scaled, repeats an earlier one with another --out copies
that one's dataset). A command that needs a GPU (`--device cuda`) is parsed and configured only. A bare
command name in a sentence (`vlaforge demo` runs ...) is a mention, not a command: the demo itself is
`make demo`, and tests/eval/test_end_to_end.py runs it scaled down. `vlaforge serve` runs until stopped:
it is started in a subprocess on a free port, the README's evaluation over `ws://127.0.0.1:8000` is
pointed at it, and it is stopped at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlaforge.cli import _command_of, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the README and the pages it links
TASK = "drawer-close-v3"
# flag -> scaled value, per command (None: any command).
SCALE = {
    ("collect", "--episodes"): "4",
    ("eval", "--episodes"): "1",
    ("demo", "--episodes"): "2",
    (None, "--steps"): "2",
    (None, "--tasks"): TASK,
    ("eval", "--max-steps"): "40",
    ("serve", "--port"): "0",  # a free port; the README's ws://127.0.0.1:8000 is rewritten to it
}


def readme_commands() -> list[list[str]]:
    text = "\n".join(page.read_text() for page in PAGES)
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [ln.split("  #")[0].strip() for ln in block.splitlines()]
    lines += re.findall(r"`((?:vlaforge|torchrun) [^`]+)`", text)
    commands = []
    for ln in lines:
        words = shlex.split(ln) if ln.startswith(("vlaforge ", "torchrun ", "python -m vlaforge.")) else []
        # Skip mentions: a bare command name in a sentence (`vlaforge collect` writes ...) and lines with
        # placeholders (`vlaforge CMD --help`, `vlaforge train --out RUN`).
        # A mention (`vlaforge dataset convert` in prose) or a placeholder (`--policy RUN/last`) is no command.
        mention = all(w.isalpha() and w.islower() for w in words)
        if (
            len(words) > 2
            and not mention
            and not any(part.isupper() and part.isalpha() for w in words for part in re.split(r"[/=]", w))
            and words not in commands
        ):
            commands.append(words)
    return commands


def _vlaforge_argv(cmd: list[str]) -> list[str]:
    """The argv after `vlaforge` (or after `-m vlaforge.cli` for torchrun)."""
    return cmd[1:] if cmd[0] == "vlaforge" else cmd[cmd.index("vlaforge.cli") + 1 :]


def _scaled(argv: list[str]) -> list[str]:
    name = _command_of(argv)
    out = list(argv)
    env = out[out.index("--env") + 1] if "--env" in out else None
    for i, a in enumerate(out[:-1]):
        for (cmd, flag), value in SCALE.items():
            if (
                a == flag
                and cmd in (None, name)
                and not (flag == "--tasks" and env not in (None, "metaworld"))
            ):
                out[i + 1] = value
    if name == "train" and "--steps" not in out:
        out += ["--steps", "2", "--warmup-steps", "0"]  # the default or a recipe's own length, scaled down
    if name == "eval" and "--max-steps" not in out and "--protocol" not in out:
        out += ["--max-steps", "40"]  # the env's episode length, scaled down (a protocol fixes its own)
    return ["demo/run/last" if a == "demo/run/last" else a for a in out]


def test_readme_lists_the_main_commands():
    cmds = [" ".join(c[:2]) for c in readme_commands()]
    for want in (
        "vlaforge collect",
        "vlaforge train",
        "vlaforge eval",
        "vlaforge dataset",
        "vlaforge serve",
        "torchrun --nproc_per_node",
    ):
        assert any(c.startswith(want) for c in cmds), want


@pytest.mark.slow
@pytest.mark.sim
def test_every_readme_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VLAFORGE_DEBUG", raising=False)
    torch.set_num_threads(1)
    commands = readme_commands()
    # Order: data before training before evaluation, as a reader runs them.
    rank = {
        "collect": 0,
        "dataset": 1,
        "train": 2,
        "serve": 3,
        "eval": 4,
        "export": 5,
        "tokenizer": 1,
        "latent": 1,  # after collect: `latent train` reads a dataset; `latent label` then writes one
        "idm": 1,  # after collect: `idm train` reads a dataset; `idm label` and `idm check` then use it
        "demo": 6,
    }
    # `python -m vlaforge.<module>` helpers (a tiny checkpoint to fine-tune) run first.
    commands.sort(key=lambda c: -1 if c[0] == "python" else rank[_command_of(_vlaforge_argv(c))])
    ran = []
    servers: list[subprocess.Popen] = []
    served = {}  # the README's ws:// address -> the running server's
    try:
        _run_commands(commands, ran, servers, served)
    finally:
        for proc in servers:
            proc.terminate()
            proc.communicate(timeout=30)
    assert Path("runs/mt10/last/model.safetensors").is_file()
    assert Path("runs/lora/last/model.safetensors").is_file()
    assert Path("runs/ddp/last/model.safetensors").is_file()
    assert Path("evals/mt10/eval_info.json").is_file() and Path("ep3.mp4").is_file()
    assert Path("evals/served/eval_info.json").is_file()
    assert len(ran) >= 12, ran


def _run_commands(commands: list[list[str]], ran: list, servers: list, served: dict) -> None:
    gpu_outputs: list[str] = []  # what commands that need a GPU would have written
    collected: dict[tuple[str, ...], str] = {}  # a scaled collect's flags but --out -> its output
    for cmd in commands:
        if cmd[0] == "python":
            done = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            ran.append(" ".join(cmd))
            continue
        argv = _scaled(_vlaforge_argv(cmd))
        if "demo/run/last" in argv:  # the README's held-out evaluation of the demo's policy
            argv[argv.index("demo/run/last")] = "runs/mt10/last"
        argv = [served.get(a, a) for a in argv]
        name = _command_of(argv)
        args = build_parser(name).parse_args(argv)  # every flag exists and every value parses
        if name == "train" and args.recipe:  # as `main` does: the recipe's values are the defaults
            from vlaforge.train.recipes import check_recipe

            args = build_parser(name, defaults=check_recipe(args.recipe)).parse_args(argv)
        needs_gpu = getattr(args, "device", None) == "cuda" and not torch.cuda.is_available()
        reads_gpu_output = any(a.startswith(out) for a in argv for out in gpu_outputs)
        if reads_gpu_output or (needs_gpu and name == "export"):
            continue  # parsed; its input comes from a run that needs a GPU
        if "--init" in argv and not Path(argv[argv.index("--init") + 1]).exists():
            assert needs_gpu, f"{cmd}: --init names a checkpoint this test cannot have"
        if needs_gpu:
            if getattr(args, "out", None):
                gpu_outputs.append(args.out)
            from vlaforge.cli import CONFIG_COMMANDS, _load
            from vlaforge.config import config_from_args

            config_from_args(_load(CONFIG_COMMANDS[name][1]), args)  # valid, but needs a GPU to run
            continue
        if name == "collect" and "--out" in argv:
            # Scaled down, several pages' collections are the same command with another --out (4 episodes
            # of one task): it ran once; the others copy its dataset.
            i = argv.index("--out")
            key = tuple(argv[:i] + argv[i + 2 :])
            if key in collected:
                shutil.copytree(collected[key], argv[i + 1])
                ran.append(" ".join(argv))
                continue
            collected[key] = argv[i + 1]
        if name == "serve":
            proc = subprocess.Popen(
                [sys.executable, "-m", "vlaforge.cli", *argv], stdout=subprocess.PIPE, text=True
            )
            servers.append(proc)
            line = proc.stdout.readline()
            port = re.search(r"on ws://127\.0\.0\.1:(\d+) ", line)
            assert port, f"{cmd}: {line!r}"
            readme_port = cmd[cmd.index("--port") + 1]
            served[f"ws://127.0.0.1:{readme_port}"] = f"ws://127.0.0.1:{port.group(1)}"
            ran.append(" ".join(argv))
            continue
        if cmd[0] == "torchrun":
            torchrun = [sys.executable, "-m", "torch.distributed.run", *cmd[1 : cmd.index("-m")]]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(
                [*torchrun, "-m", "vlaforge.cli", *argv], env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        else:
            try:
                main(argv)
            except SystemExit as e:
                pytest.fail(f"README command {' '.join(cmd)} (run as {argv}) exited with {e.code}")
        ran.append(" ".join(argv))
