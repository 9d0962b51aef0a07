"""The documentation stays true to the code: the generated command reference is current, and every shell
command in README.md and docs/guide/*.md either parses under the current CLI (lingreg, lm_eval, torchrun)
or names what it needs (`# needs a GPU`, `# needs a hub model`); a marked `lingreg` or `lm_eval` line must
still parse. Nothing here loads a model."""

from __future__ import annotations

import importlib.util
import inspect
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO

GENERATED = REPO / "docs" / "guide" / "commands.md"
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs" / "guide").glob("*.md") if p != GENERATED)]

#: Trailing comments for commands that cannot run in the test environment (a marked lingreg/lm_eval line must still parse).
MARKERS = ("# needs a GPU", "# needs a hub model", "# needs a hub dataset")
#: What a command line on a machine with a GPU or hub access looks like; such lines must carry a marker.
NEEDS_GPU = re.compile(r"--device[ =]cuda|\bcuda\b|\bnccl\b|\bvllm\b")
NEEDS_HUB = re.compile(r"\b(meta-llama|mistralai|Qwen|google|EleutherAI)/[\w.-]+|\bdatasets:")
#: lm-eval models a documented command may use (vllm only on a line marked as needing a GPU).
LM_EVAL_MODELS = {"hf", "hf-lingreg", "hf-region-ablated", "hf-perturbed", "steered", "vllm"}
#: Command prefixes that are checked by no parser and harm nothing.
HARMLESS = ("pip install ", "python -m pip install ", "source ", "cd ", "export ", "python -c ", "npm pack ")
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<"}


@dataclass(frozen=True)
class Command:
    page: Path
    line: int  # where the command starts
    text: str  # backslash continuations joined, comment removed
    comment: str

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.text}"


def _split_comment(line: str) -> tuple[str, str]:
    """The command and its trailing comment: the first `#` outside quotes at the start or after a blank."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:].strip()
    return line.rstrip(), ""


def commands(page: Path) -> list[Command]:
    """Every command line of the page's ```bash blocks."""
    out: list[Command] = []
    in_block = False
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if raw.startswith("```"):
            in_block = raw.strip() == "```bash" if not in_block else False
            continue
        if not in_block:
            continue
        text, comment = _split_comment(raw)
        if not pending:
            start = number
        if text.endswith("\\") and not comment:
            pending.append(text[:-1].strip())
            continue
        joined = " ".join([*pending, text.strip()]).strip()
        pending = []
        if joined:
            out.append(Command(page, start, joined, comment))
    assert not pending, f"{page.relative_to(REPO)}:{start}: a backslash continuation runs off the end of its block"
    return out


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in commands(page)]


# --- the parsers ---------------------------------------------------------------------------------------------


def _lingreg_problem(args: list[str]) -> str | None:
    from lm_eval_lingreg.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        return f"`lingreg` does not accept it (argparse exit {e.code})"
    return None


def _lm_eval_parse(args: list[str]) -> str | None:
    """lm-eval's own command line, where this version exposes it."""
    try:
        from lm_eval._cli import HarnessCLI
    except ImportError:  # before lm-eval's subcommands: the flat parser
        try:
            from lm_eval.__main__ import setup_parser
        except ImportError:
            return None
        parser, argv = setup_parser(), args
    else:
        parser, argv = HarnessCLI()._parser, ["run", *args]
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        return f"lm-eval's command line does not accept it (argparse exit {e.code})"
    return None


def _option(args: list[str], name: str) -> list[str]:
    """Every value given to `name` (as `--name v` or `--name=v`)."""
    values = []
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            values.append(args[i + 1])
        elif a.startswith(name + "="):
            values.append(a.split("=", 1)[1])
    return values


def _task_names() -> set[str]:
    names = {p.stem for p in (REPO / "tasks").glob("lingreg_*.yaml")}
    return names | {"lingreg_ppl", "lingreg_gen", "lingreg_mt"}


def _model_arg_keys(model: str) -> set[str]:
    """The keys a model accepts, as the wrappers' own check sees them (HFLM, from_pretrained, their own)."""
    from lm_eval.models.huggingface import HFLM

    from lm_eval_lingreg import models

    known = set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"} | models._FROM_PRETRAINED
    cls = {"hf-lingreg": models.LingregLM, "hf-region-ablated": models.RegionAblatedLM, "hf-perturbed": models.PerturbedLM}.get(model)
    if cls is not None:
        known |= cls.OWN_ARGS | models.LingregLM.OWN_ARGS
    if model == "steered":  # lm-eval's own steered model (the target of `lingreg steer-vector --steered`)
        from lm_eval.models.hf_steered import SteeredModel

        known |= set(inspect.signature(SteeredModel.__init__).parameters) - {"self", "kwargs"}
    return known


def _is_shipped_name(value: str) -> bool:
    return "/" not in value and not Path(value).suffix


def _lm_eval_problem(args: list[str], comment: str) -> str | None:
    from lm_eval_lingreg.languages import LANGUAGES
    from lm_eval_lingreg.region_io import shipped_masks

    problem = _lm_eval_parse(args)
    if problem:
        return problem
    models = _option(args, "--model")
    if len(models) != 1:
        return "give exactly one --model"
    model = models[0]
    if model not in LM_EVAL_MODELS:
        return f"--model {model} is not one of {', '.join(sorted(LM_EVAL_MODELS))}"
    if model == "vllm" and "# needs a GPU" not in comment:
        return "--model vllm: mark the line `# needs a GPU`"
    tasks = [t for value in _option(args, "--tasks") for t in value.split(",")]
    if not tasks:
        return "no --tasks"
    known_tasks = _task_names()
    generated = re.compile(rf"lingreg_mt_({'|'.join(LANGUAGES)})_({'|'.join(LANGUAGES)})")
    for task in tasks:
        if task in known_tasks or (_option(args, "--include_path") and generated.fullmatch(task)):
            continue
        return f"--tasks {task}: not a lingreg task or group"
    if model == "vllm":  # vLLM's own model_args
        return None
    keys = _model_arg_keys(model)
    perturbation: dict[str, str] = {}
    for value in _option(args, "--model_args"):
        for pair in value.split(","):
            key, eq, arg = pair.partition("=")
            if not eq:
                return f"--model_args {pair!r} is not key=value"
            if key not in keys:
                return f"--model_args key {key!r} is not accepted by --model {model}"
            if key == "mask" and _is_shipped_name(arg) and arg not in shipped_masks():
                return f"mask={arg}: not a shipped mask"
            if model == "hf-perturbed" and key != "perturb":
                from lm_eval_lingreg.perturbation import KEYS

                if key in KEYS:
                    perturbation[key] = arg
            if key == "perturb" and "=" in arg:  # the inline form; a spec file is the user's
                from lm_eval_lingreg.perturbation import parse_spec

                try:
                    parse_spec(arg)
                except Exception as e:  # the message is the failure
                    return f"perturb={arg!r}: {e}"
    if perturbation:
        from lm_eval_lingreg.perturbation import parse_spec

        try:
            parse_spec(perturbation)
        except Exception as e:
            return f"perturbation {perturbation}: {e}"
    return None


def problem(command: Command) -> str | None:
    """Why the command cannot stand as documented, or None."""
    marked = any(command.comment.startswith(m) or command.comment.endswith(m) for m in MARKERS)
    text = command.text
    if not marked and NEEDS_GPU.search(text):
        return "uses a GPU: mark it `# needs a GPU`"
    if not marked and NEEDS_HUB.search(text):
        return "uses the model hub: mark it `# needs a hub model` (or `# needs a hub dataset`)"
    if text.startswith(HARMLESS):
        return None
    try:
        args = shlex.split(text)
    except ValueError as e:
        return f"not one shell command: {e}"
    if SHELL_OPERATORS & set(args):
        return "one command per line, please (no &&, |, ;, redirections)"
    head, rest = args[0], args[1:]
    if head == "lingreg":
        return _lingreg_problem(rest)
    if head == "lm_eval":
        return _lm_eval_problem(rest, command.comment)
    if head == "bash":
        if not rest or not (REPO / rest[0]).is_file() or not rest[0].startswith("scripts/"):
            return "bash runs a script under scripts/ that exists"
        return None
    if head in ("python", ".venv/bin/python") and rest and rest[0].endswith(".py"):
        return None if (REPO / rest[0]).is_file() else f"{rest[0]} does not exist"
    if head in ("torchrun", "accelerate"):
        if "-m" in rest and rest[rest.index("-m") + 1 : rest.index("-m") + 2] == ["lm_eval_lingreg.cli"]:
            return _lingreg_problem(rest[rest.index("-m") + 2 :])
        if "-m" in rest and rest[rest.index("-m") + 1 : rest.index("-m") + 2] == ["lm_eval"]:
            return _lm_eval_problem(rest[rest.index("-m") + 2 :], command.comment)
        return None if marked else "torchrun/accelerate runs `-m lm_eval_lingreg.cli ...` or `-m lm_eval ...` here, or mark the line"
    if marked:  # what it runs cannot be checked here; the marker says what it needs
        return None
    return "not a command this test knows how to check: make it one, or mark it `# needs a GPU` / `# needs a hub model`"


# --- the tests -----------------------------------------------------------------------------------------------


def _reference_module():
    spec = importlib.util.spec_from_file_location("build_command_reference", REPO / "scripts" / "build_command_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_reference_is_generated_from_the_current_parser():
    expected = _reference_module().render()
    assert GENERATED.read_text(encoding="utf-8") == expected, "docs/guide/commands.md is stale: run `python scripts/build_command_reference.py`"


def test_the_command_reference_covers_every_command_and_nested_subcommand():
    text = GENERATED.read_text(encoding="utf-8")
    for heading in ("## lingreg demo", "## lingreg extract", "## lingreg mask info", "## lingreg mask compare", "## lingreg mask convert"):
        assert f"\n{heading}\n" in text, heading
    assert "Generated by `python scripts/build_command_reference.py`" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_command_parses_or_says_what_it_needs(page):
    failures = [f"{c.where()}\n    -> {why}" for c in commands(page) if (why := problem(c))]
    assert not failures, "\n".join(failures)


def test_the_documented_commands_are_found():
    found = all_commands()
    heads = {c.text.split()[0] for c in found}
    assert {"lingreg", "lm_eval", "bash", "torchrun"} <= heads, heads
    assert len([c for c in found if c.text.startswith("lingreg ")]) >= 40
    assert sum(c.comment.endswith(MARKERS) for c in found) >= 5
    readme = [c.text for c in commands(REPO / "README.md")]
    assert "bash scripts/main.sh" in readme and "bash scripts/test.sh" in readme


def test_the_checks_catch_what_they_are_for():
    page = REPO / "README.md"

    def why(text: str, comment: str = "") -> str | None:
        return problem(Command(page, 1, text, comment))

    assert why("lingreg mask info core.safetensors") is None
    assert "does not accept" in why("lingreg mask inspect core.safetensors")
    assert "does not accept" in why("lingreg score --langs ar --no-such-option")
    assert why("lm_eval --model hf-region-ablated --model_args mask=core --tasks lingreg_ppl_en") is None
    assert "not a lingreg task" in why("lm_eval --model hf-lingreg --tasks lingreg_ppl_xx")
    assert "mask_vale" in why("lm_eval --model hf-region-ablated --model_args mask_vale=1 --tasks lingreg_ppl")
    assert "not accepted" in why("lm_eval --model hf-lingreg --model_args mask=core --tasks lingreg_ppl")
    assert "not one of" in why("lm_eval --model hf-steered-maybe --tasks lingreg_ppl")
    assert "valeu" in why("lm_eval --model hf-perturbed --model_args layer=1,dim=9,op=mul,valeu=4 --tasks lingreg_ppl")
    assert "GPU" in why("lm_eval --model vllm --model_args pretrained=ablated/ --tasks lingreg_ppl")
    assert why("lm_eval --model vllm --model_args pretrained=ablated/ --tasks lingreg_ppl", "# needs a GPU") is None
    assert "hub model" in why("lingreg score --pretrained meta-llama/Llama-2-7b-hf --langs ar --out s/")
    assert "script under scripts/" in why("bash scripts/nope.sh")
    assert why("torchrun --standalone --nproc_per_node 2 -m lm_eval_lingreg.cli score --device cpu --backend gloo --langs ar --out s/") is None
    assert (
        why("torchrun --standalone --nproc_per_node 2 -m lm_eval --model hf-region-ablated --model_args mask=core,tp_plan=auto --tasks lingreg_ppl_en") is None
    )
    assert "mask_vale" in why(
        "accelerate launch --multi_gpu --num_processes 2 -m lm_eval --model hf-region-ablated --model_args mask_vale=1 --tasks lingreg_ppl"
    )
    assert "not a command" in why("rm -rf out/")
    assert "one command per line" in why("lingreg prepare && lingreg demo")


def test_commands_are_split_as_a_shell_reads_them(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```bash\n# a comment\nlingreg demo \\\n    --langs en   # trailing\n\n"
        "lm_eval --model hf --tasks x  # needs a GPU\necho '# not a comment'\n```\n```text\nlingreg nope\n```\n",
        encoding="utf-8",
    )
    found = commands(page)
    assert [(c.line, c.text, c.comment) for c in found] == [
        (4, "lingreg demo --langs en", "# trailing"),
        (7, "lm_eval --model hf --tasks x", "# needs a GPU"),
        (8, "echo '# not a comment'", ""),
    ]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


@pytest.mark.slow
def test_the_python_examples_run_as_written_on_the_bundled_model(bundled_model_dir, tmp_path, monkeypatch):
    """README.md and the guides' Python blocks, exactly as written, on the bundled model; the training fragment gets the
    `model`, `args`, `ds` and `optimizer` it names from a real Trainer set-up."""
    import shutil

    import torch
    from transformers import Trainer, TrainingArguments

    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "docs" / "results" / "regions", tmp_path / "lingreg-demo")  # what the README's table reads
    pages = [REPO / "README.md", *(REPO / "docs" / "guide" / name for name in ("language.md", "regions.md", "training.md"))]
    blocks = {page.name: block for page in pages for block in _python_blocks(page)}
    assert sorted(blocks) == ["README.md", "language.md", "regions.md", "training.md"]
    for name in ("README.md", "language.md", "regions.md"):
        exec(compile(blocks[name], name, "exec"), {})  # noqa: S102 - the project's own documentation
    assert (tmp_path / "random1.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    from lm_eval_lingreg import prepare

    model = AutoModelForCausalLM.from_pretrained(prepare())
    setup = {
        "model": model,
        "args": TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True),
        "ds": [],
        "Trainer": Trainer,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.0),
    }
    exec(compile(blocks["training.md"], "training.md", "exec"), setup)  # noqa: S102
