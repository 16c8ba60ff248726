"""The documentation as written works: every page of docs/ (with the README sections it
includes) is read, and each code block and command in it is checked against the code.

- `iapo ...` commands in shell blocks are parsed by the real command line (click), without
  running them: the command, its options and their values; inline `iapo ...` names existing
  commands and options.
- Python blocks compile; the index page's example runs.
- TOML blocks parse; the example task file and keys file load, and every task-file fragment
  loads inside the example task.
- `benchmarks/...` paths exist (or, where the page says so, at the commit it names), and the
  options given to a benchmark script are the script's; every experiment script is cited by a
  page, every perf script by docs/measured.md.
- `make X` names a Makefile target.
- The defaults the pages state are the code's.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
SNIPPET = re.compile(r'^--8<-- "README\.md:([\w-]+)"$', re.M)
BENCH_PATH = re.compile(r"(?<![\w:/.-])benchmarks/[\w./-]*[\w/]")
SHELL = ("sh", "bash", "")


def page_text(page: str) -> str:
    """The page as the site shows it: README sections (``--8<--``) included."""
    readme = (ROOT / "README.md").read_text()

    def section(m: re.Match[str]) -> str:
        start = readme.index("\n", readme.index(f"--8<-- [start:{m.group(1)}]")) + 1
        end = readme.rindex("\n", 0, readme.index(f"--8<-- [end:{m.group(1)}]")) + 1
        return readme[start:end]

    return SNIPPET.sub(section, (DOCS / page).read_text())


def blocks(page: str) -> list[tuple[str, str]]:
    """(language, text) of every fenced code block of the page, indented ones included."""
    return [(m.group(2), textwrap.dedent(m.group(3))) for m in FENCE.finditer(page_text(page))]


def spans(page: str) -> list[str]:
    """The page's inline code, outside fenced blocks; a span broken over lines is one line."""
    prose = FENCE.sub("", page_text(page))
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]


def commands(text: str) -> list[list[str]]:
    """The shell commands of ``text``: continuation lines joined, comments dropped, ``&&`` and
    ``;`` split, leading ``VAR=value`` assignments dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words: list[str] = []
        for w in [*shlex.split(line, comments=True), "&&"]:
            if w in ("&&", ";"):
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                    words.pop(0)
                if words:
                    out.append(words)
                words = []
            else:
                words.append(w)
    return out


def shell_commands(page: str) -> list[list[str]]:
    return [c for lang, text in blocks(page) if lang in SHELL for c in commands(text)]


def span_commands(page: str, first: tuple[str, ...]) -> list[list[str]]:
    """Inline spans that are commands starting with one of ``first`` (after assignments)."""
    out = []
    for s in spans(page):
        if not re.match(rf"^(?:[A-Z_]+=\S+ )*(?:{'|'.join(map(re.escape, first))})(?: |$)", s):
            continue
        try:
            out += commands(s)
        except ValueError:  # an unbalanced quote: not a command
            continue
    return out


def is_iapo(words: list[str]) -> bool:
    return words[0] == "iapo" or words[0].endswith("/bin/iapo")


def bare(args: list[str]) -> list[str]:
    """The usage line's notation removed: ``[--json]`` and ``[--learner psst]`` become the
    options themselves."""
    return [a.removeprefix("[").removesuffix("]") for a in args if a not in ("[", "]")]


def parse_iapo(args: list[str]) -> None:
    """Parse ``iapo args`` with the real command line, nothing run; a UsageError if wrong.
    ``iapo a | b | c`` (a list of commands) checks that each exists."""
    from iapo.cli import main

    args = bare(args)
    if "|" in args:
        names = args[::2]
        missing = [n for n in names if n not in main.commands]
        if missing or set(args[1::2]) != {"|"}:
            raise click.UsageError(f"no command {missing} in {' | '.join(names)}")
        return
    if args and args[0].startswith("-"):
        main.make_context("iapo", args)
        return
    if not args or args[0] not in main.commands:
        raise click.UsageError(f"no iapo command {args[:1]}")
    with click.Context(main, info_name="iapo") as parent:
        main.commands[args[0]].make_context(args[0], args[1:], parent=parent)


def known_options(args: list[str]) -> list[str]:
    """The options of ``iapo args`` that its command lacks (a fragment: no full parse)."""
    from iapo.cli import main

    args = bare(args)
    cmd: click.Command = main
    if args and args[0] in main.commands:
        cmd = main.commands[args[0]]
    elif args and not args[0].startswith("-"):
        return [f"command {args[0]}"]
    names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return [a for a in args if a.startswith("--") and a.split("=")[0] not in names]


# -- iapo commands --------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_iapo_command_of_a_shell_block_parses(page: str) -> None:
    for words in shell_commands(page):
        if is_iapo(words):
            try:
                parse_iapo(words[1:])
            except click.UsageError as e:
                pytest.fail(f"docs/{page}: `{shlex.join(words)}`: {e.format_message()}")


@pytest.mark.parametrize("page", PAGES)
def test_every_inline_iapo_command_names_a_command_and_its_options(page: str) -> None:
    for words in span_commands(page, ("iapo", ".venv/bin/iapo")):
        assert not known_options(words[1:]), f"docs/{page}: `{shlex.join(words)}`"


def test_the_commands_are_checked_and_a_wrong_one_fails() -> None:
    assert sum(is_iapo(w) for p in PAGES for w in shell_commands(p)) >= 20
    assert any(w[:2] == ["iapo", "serve"] for w in shell_commands("gateway.md"))
    assert ["iapo", "learners"] in shell_commands("cli.md")  # the README's list, included
    parse_iapo(["train", "ENV", "[--learner", "psst]", "--budget", "5000", "--out", "p.json"])
    for wrong in (["bench", "--no-such-option"], ["nosuch"], ["train", "math", "--budget",
                  "many", "--out", "p.json"], ["bench", "--stop", "sometimes"],
                  ["optimize", "|", "answr"]):
        with pytest.raises(click.UsageError):
            parse_iapo(wrong)
    assert known_options(["serve", "...", "--kees", "k.toml"]) == ["--kees"]


# -- Python and TOML blocks ---------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_compiles(page: str) -> None:
    for lang, text in blocks(page):
        if lang == "python":
            compile(text, f"docs/{page}", "exec")


def python_blocks(page: str) -> list[str]:
    return [text for lang, text in blocks(page) if lang == "python"]


def test_the_python_example_of_the_index_page_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = python_blocks("index.md")
    exec(compile(block, "docs/index.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("{") and "'regret'" in out[0]
    assert out[1] == "{'batches': 50, 'estimator': 'blocks', 'growth': 1.0, 'epsilon': 0.05}"
    assert out[2].startswith("Choice(prompt=") and out[2].endswith(" 2000")


def toml_blocks() -> list[tuple[str, str, dict[str, Any]]]:
    """(page, text, parsed) of every TOML block."""
    return [(page, text, tomllib.loads(text)) for page in PAGES for lang, text in blocks(page)
            if lang == "toml"]


def example_task() -> dict[str, Any]:
    (task,) = [t for page, _, t in toml_blocks() if page == "live.md" and "prompts" in t]
    return task


def load_example(tmp_path: Path, raw: dict[str, Any]) -> Any:
    from iapo.live.task import task_from_dict

    (tmp_path / raw["data"]["path"]).write_text(
        '{"id": "q0", "query": "Which planet is red? A) Venus B) Mars", "gold": "B"}\n')
    return task_from_dict(raw, tmp_path / "task.toml")


def test_the_example_task_loads_and_every_task_fragment_loads_inside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from iapo.live.task import TaskError
    from iapo.problem import Stopping
    from iapo.settings import DEFAULT_LEARNER

    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge-example")
    task = load_example(tmp_path, example_task())
    assert (task.name, [p.name for p in task.prompts]) == ("my-task", ["direct", "reason"])
    # live.md: `learner` (default `psst-auto`), `stop` ("all", the default), `wave` (default 1)
    assert (task.learner, task.stopping) == (DEFAULT_LEARNER, Stopping("all", 1))
    fragments = [(p, t) for p, _, t in toml_blocks() if "keys" not in t and "prompts" not in t]
    assert len(fragments) >= 2
    for page, fragment in fragments:
        raw = example_task()
        for table, value in fragment.items():
            raw[table] = {**raw[table], **value} if isinstance(value, dict) else value
        try:
            load_example(tmp_path, raw)
        except TaskError as e:
            pytest.fail(f"docs/{page}: the task-file fragment {fragment} does not load: {e}")


def test_the_example_keys_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from iapo.serve.keys import load_keys

    (text, keys), = [(x, t) for page, x, t in toml_blocks()
                     if page == "gateway.md" and "keys" in t]
    for row in keys["keys"]:
        monkeypatch.setenv(row["key_env"], f"sk-{row['name']}-example")
    (tmp_path / "keys.toml").write_text(text)
    loaded = load_keys(tmp_path / "keys.toml")
    assert [k.name for k in loaded] == ["support-bot", "research"]
    assert loaded[0].contexts == ("budget=low", "budget=mid") and loaded[1].contexts is None


# -- benchmarks and make ------------------------------------------------------------------


def code_text(page: str) -> str:
    return "\n".join([text for _, text in blocks(page)] + spans(page))


@pytest.mark.parametrize("page", [*PAGES, "../README.md"])
def test_every_benchmark_path_exists_or_is_at_the_commit_the_page_names(page: str) -> None:
    text = (DOCS / page).read_text()
    history = re.findall(r"git history at commit ([0-9a-f]{7,40})", text)
    for path in BENCH_PATH.findall(code_text(page)):
        if (ROOT / path).exists():
            continue
        found = [c for c in history if subprocess.run(
            ["git", "cat-file", "-e", f"{c}:{path.rstrip('/')}"], cwd=ROOT,
            capture_output=True).returncode == 0]
        assert found, f"docs/{page} names {path}, which does not exist"


@pytest.mark.parametrize("page", PAGES)
def test_every_benchmark_command_gives_the_script_options_it_has(page: str) -> None:
    for words in [*shell_commands(page), *span_commands(page, (".venv/bin/python",))]:
        scripts = [i for i, w in enumerate(words) if BENCH_PATH.fullmatch(w)]
        for i in scripts:
            source = (ROOT / words[i]).read_text()
            wrong = [w for w in words[i + 1:] if w.startswith("--")
                     and f'"{w.split("=")[0]}"' not in source]
            assert not wrong, f"docs/{page}: {words[i]} has no option {wrong}"


def test_experiments_and_their_pages_cite_each_other_and_measured_cites_perf() -> None:
    import ast

    experiments = sorted((ROOT / "benchmarks" / "experiments").glob("*.py"))
    assert len(experiments) >= 10
    for script in experiments:
        path = str(script.relative_to(ROOT))
        citing = {p for p in PAGES if path in code_text(p)}
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        named = set(re.findall(r"docs/([\w-]+\.md)", doc))
        assert citing & named, f"{path}: cited by {citing}, its docstring names {named}"
    measured = code_text("measured.md")
    helpers = ("suite", "targets", "rig", "fake_upstream")
    for script in sorted((ROOT / "benchmarks" / "perf").glob("*.py")):
        if script.stem not in helpers:
            assert str(script.relative_to(ROOT)) in measured, f"measured.md lacks {script.name}"


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M))


@pytest.mark.parametrize("page", [*PAGES, "../README.md"])
def test_every_make_command_names_a_makefile_target(page: str) -> None:
    found = [*shell_commands(page), *span_commands(page, ("make",))]
    for words in found:
        if words[0] == "make":
            goals = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            assert set(goals) <= makefile_targets(), f"docs/{page}: `{shlex.join(words)}`"


def test_the_make_check_sees_the_pages_commands() -> None:
    assert {"demo", "test", "docs", "bench", "mutation"} <= makefile_targets()
    assert ["make", "mutation"] in shell_commands("mutation.md")
    assert ["make", "demo"] in shell_commands("index.md")


# -- stated defaults ----------------------------------------------------------------------

# page, what it says (whitespace-insensitive), command, parameter, the code's default
STATED_DEFAULTS: list[tuple[str, str, str, str, Any]] = [
    ("cli.md", "`oracle` and `train` take them too, the default is the paper's `all`",
     "bench", "stop", "all"),
    ("cli.md", "the default is the paper's `all`", "oracle", "stop", "all"),
    ("cli.md", "the default is the paper's `all`", "train", "stop", "all"),
    ("stopping.md", "The default stays the paper's `--stop all`.", "bench", "stop", "all"),
    ("cli.md", "iapo train ENV [--learner psst] --budget 5000 --seed 0 --out policy.json "
     "# default: psst-auto", "train", "learner", "psst-auto"),
    ("cli.md", "# the paper's protocol: 200 runs x 5 budgets x the paper's 10 learners",
     "bench", "runs", 200),
    ("cli.md", "200 runs x 5 budgets", "bench", "budgets", "1000,2000,5000,10000,20000"),
    ("gateway.md", "`--max-body` (1 MB by default)", "serve", "max_body", 1_000_000),
    ("gateway.md", "`--body-timeout` seconds (10 by default)", "serve", "body_timeout", 10.0),
]


@pytest.mark.parametrize(("page", "says", "command", "param", "default"), STATED_DEFAULTS)
def test_a_default_a_page_states_is_the_commands(page: str, says: str, command: str,
                                                 param: str, default: Any) -> None:
    from iapo.cli import main

    assert " ".join(says.split()) in " ".join(page_text(page).split()), f"docs/{page}"
    (p,) = [p for p in main.commands[command].params if p.name == param]
    assert p.default == default


def test_the_defaults_the_pages_state_are_the_codes() -> None:
    import dataclasses

    from iapo.learners import PAPER_LEARNERS, UCB, EpsilonGreedy, Softmax
    from iapo.settings import DEFAULT_LEARNER, PAPER_BUDGETS, ServeConfig, serve_default

    budget_page = (DOCS / "psst-budget.md").read_text()
    assert "decide in 50 equal batches" in budget_page and "20 batches, each" not in budget_page
    for spec in (EpsilonGreedy(), Softmax(), UCB()):
        assert (spec.batches, spec.growth) == (50, 1.0)
    assert "`iapo train` and task files without a `learner` use `psst-auto`" in budget_page
    assert DEFAULT_LEARNER == "psst-auto"
    assert "--budgets 1000,5000" in (DOCS / "../README.md").read_text()
    assert PAPER_BUDGETS == (1000, 2000, 5000, 10000, 20000)
    assert len(PAPER_LEARNERS) == 10  # cli.md: "the paper's 10 learners", bench's default
    gateway = (DOCS / "gateway.md").read_text()
    assert "`--body-timeout` seconds (10 by default)" in gateway
    assert "Bodies over `--max-body` (1 MB) get 413" in gateway
    assert (serve_default("body_timeout"), serve_default("max_body")) == (10.0, 1_000_000)
    assert {f.name for f in dataclasses.fields(ServeConfig)} >= {"limits", "cors_origins"}
