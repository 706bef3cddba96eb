"""Every command in README.md, CHANGELOG.md and docs/ still works, and every link resolves.

Commands are the lines of fenced shell blocks and the inline code spans that start like a
command (`python run.py`, `python experiments/...`, `reccocktail ...`). Each is checked without
running anything heavy:

- `python run.py <overrides>` (also under `torchrun`, `/usr/bin/time -v`, `reccocktail run`,
  and `reccocktail recommend`'s translation) is composed in-process with Hydra's compose API,
  every value of a `-m` sweep once, and then passed through the config check, so a renamed or
  misspelt key fails here; a `+key=value` addition must name a key some config file knows;
- `python experiments/<script>.py ...` runs with `--dry-run` (it prints its plan);
- benchmark scripts and `python -m ...` modules parse their arguments (argparse stops there);
- `make <target>` names a Makefile target, `bash <script>` an existing script.

Placeholders such as `<time>` or `<yours>` are replaced by a dummy value. Links: relative paths
exist and `#anchors` match a heading of the target page (GitHub's slugs).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from reccocktail import cli
from reccocktail.config_check import check_config

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^([ \t]*)(```+|~~~+)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
COMMAND_START = ("python run.py", "python3 run.py", "python experiments/", "python -m reccocktail",
                 "reccocktail ", "torchrun ", "make ")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
EXTERNAL = {"hf", "wandb", "pip", "ruff", "nvidia-smi"}  # other tools' commands, not ours
README_MAX_LINES = 300


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _outside_fences(text: str) -> str:
    """The page with its fenced blocks blanked (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def page_commands(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    rel = str(path.relative_to(ROOT))
    out: list[Command] = []
    for m in FENCE.finditer(text):
        if m.group(3).lower() not in SHELL:
            continue
        first = text[:m.start(4)].count("\n") + 1
        pending, start = "", first
        for i, raw in enumerate(m.group(4).splitlines()):
            line = raw.strip()
            if not pending:
                start = first + i
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            full = (pending + line).strip()
            pending = ""
            if full and not full.startswith("#"):
                out.append(Command(rel, start, full))
    prose = _outside_fences(text)
    for m in INLINE.finditer(prose):
        span = " ".join(m.group(1).split())
        if span.startswith(COMMAND_START) and span not in ("make ",):
            out.append(Command(rel, prose[:m.start()].count("\n") + 1, span))
    return out


ALL_COMMANDS = [c for page in PAGES for c in page_commands(page)]


def _argv(cmd: Command) -> list[str]:
    text = PLACEHOLDER.sub("PLACEHOLDER", cmd.text)
    argv = shlex.split(text, comments=True)
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv[:2] == ["/usr/bin/time", "-v"]:
        argv = argv[2:]
    return argv


# -- python run.py -----------------------------------------------------------------------------

_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i"}
_FLAGS = {"-m", "--multirun", "--resolve", "--help", "-h", "--hydra-help", "--run", "-r"}


def hydra_overrides(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in _FLAGS_WITH_VALUE:
            skip = a != "--info"  # --info may stand alone
        elif a in _FLAGS:
            continue
        else:
            out.append(a)
    return out


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Each value of every `-m` sweep once (the others at their first value)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, o in zip(overrides, parsed):
        if o.is_sweep_override():
            key = text.split("=", 1)[0]
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([text])
    points = [[c[0] for c in choices]]
    for i, c in enumerate(choices):
        for v in c[1:]:
            points.append([*points[0][:i], v, *points[0][i + 1:]])
    return points


def _known_leaf(node: object, leaf: str) -> bool:
    if isinstance(node, dict):
        return leaf in node or any(_known_leaf(v, leaf) for v in node.values())
    return False


def compose_run(overrides: list[str]):
    """The config `python run.py <overrides>` composes; raises naming what does not exist."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=overrides, return_hydra_config=True)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    check_config(cfg)
    plain = OmegaConf.to_container(cfg, resolve=False)
    conf = ROOT / "conf"
    for o in overrides:
        key = o.split("=", 1)[0]
        if not key.startswith("+") or key.startswith("++"):
            continue
        path = key[1:]
        if (conf / path.replace(".", "/")).is_dir() or "/" in path:
            continue  # a config group added (+experiment=...)
        parts = path.split(".")
        parent = plain
        for p in parts[:-1]:
            parent = parent[p]
        parent.pop(parts[-1])  # the added key itself does not count as known
        assert len(parts) > 1 and _known_leaf(plain[parts[0]], parts[-1]), (
            f"{o}: adds a key that no config file of `{parts[0]}` knows ({parts[-1]!r})")
    return cfg


_CHECKED: set[tuple[str, ...]] = set()  # override lists already composed (pages repeat some)


def check_run_py(args: list[str]) -> None:
    for point in sweep_points(hydra_overrides(args)):
        if tuple(point) not in _CHECKED:
            compose_run(point)
            _CHECKED.add(tuple(point))


# -- scripts and modules -----------------------------------------------------------------------

class _Parsed(Exception):
    pass


def parse_only(fn, argv: list[str], monkeypatch) -> None:
    """Call `fn(argv)` (or `fn()` with sys.argv) until argparse has parsed: the documented
    flags exist and have valid values, and nothing runs."""
    real_parse, real_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args

    def stop(self, args=None, namespace=None):
        real_parse(self, args, namespace)
        raise _Parsed

    def stop_known(self, args=None, namespace=None):
        real_known(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop_known)
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with pytest.raises(_Parsed):
        try:
            fn(argv)
        except TypeError as err:
            if "positional argument" not in str(err):
                raise
            fn()


def load_script(path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # its sibling helpers (common.py, ...)
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def with_dry_run(args: list[str]) -> list[str]:
    if "--dry-run" in args:
        return args
    if "--" in args:
        i = args.index("--")
        return [*args[:i], "--dry-run", *args[i:]]
    return [*args, "--dry-run"]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def check_command(cmd: Command, monkeypatch, capsys) -> None:
    argv = _argv(cmd)
    tool = argv[0]
    if tool in ("python", "python3"):
        if argv[1] == "run.py":
            return check_run_py(argv[2:])
        if argv[1] == "-m":
            mod = importlib.import_module(argv[2])
            if len(argv) == 3:  # the module named in prose, without arguments
                return None
            main = getattr(mod, "main", None)
            assert main is not None, f"{cmd}: module {argv[2]} has no main()"
            return parse_only(main, argv[3:], monkeypatch)
        script = ROOT / argv[1]
        assert script.is_file(), f"{cmd}: {argv[1]} does not exist"
        if "argparse" not in script.read_text():
            return None  # a script without options: nothing to check but that it is there
        mod = load_script(script, monkeypatch)
        if script.parent == ROOT / "experiments":
            rc = mod.main(with_dry_run(argv[2:]))
            assert rc in (None, 0), f"{cmd}: --dry-run returned {rc}"
            return None
        return parse_only(mod.main, argv[2:], monkeypatch)
    if tool == "torchrun":
        i = next(i for i, a in enumerate(argv) if a.endswith("run.py"))
        return check_run_py(argv[i + 1:])
    if tool == "reccocktail":
        if len(argv) == 2 and argv[1] in ("run", "report", "recommend"):
            return None  # the subcommand named in prose
        sub, rest = argv[1], argv[2:]
        if sub == "run":
            return check_run_py(rest)
        if sub == "recommend":
            return check_run_py(cli.recommend_overrides(rest))
        if sub == "report":
            from reccocktail.reporting.cli import main as report_main

            return parse_only(report_main, rest, monkeypatch)
        assert sub in ("--help", "-h"), f"{cmd}: unknown subcommand {sub}"
        assert cli.main([sub]) == 0
        return None
    if tool == "make":
        assert set(argv[1:]) <= makefile_targets(), f"{cmd}: not a Makefile target"
        return None
    if tool == "bash":
        assert (ROOT / argv[1]).is_file(), f"{cmd}: {argv[1]} does not exist"
        return None
    assert tool in EXTERNAL, f"{cmd}: a command this test does not know how to check"
    return None


def test_the_pages_hold_commands():
    """The collector sees the commands (an empty list would pass everything below)."""
    pages = {c.page for c in ALL_COMMANDS}
    assert {"README.md", "docs/reproduce.md", "docs/operations.md"} <= pages
    assert any(c.text.startswith("python run.py +experiment=beauty_cold") for c in ALL_COMMANDS)
    assert any(c.text.startswith("python experiments/") for c in ALL_COMMANDS)


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=str)
def test_documented_command(cmd, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RECCOCKTAIL_CACHE", str(tmp_path / "cache"))
    check_command(cmd, monkeypatch, capsys)


def test_the_checker_catches_a_misspelt_key_and_a_made_up_addition():
    with pytest.raises(Exception, match="histroy_len"):
        check_run_py(["+experiment=ml1m_warm", "+data.histroy_len=5"])
    with pytest.raises(ConfigCompositionException):
        check_run_py(["mix.lamda=0.3"])
    with pytest.raises(ValueError, match="baselines.sasrec.max_lenn: unknown key"):
        check_run_py(["baseline=sasrec", "+baselines.sasrec.max_lenn=200"])  # config check
    with pytest.raises(AssertionError, match="no config file"):  # logger: free-form there
        check_run_py(["+logger.csv.versoin=1"])
    check_run_py(["baseline=sasrec", "+baselines.sasrec.max_len=200"])  # a common key, per model


# -- links -------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", _outside_fences(path.read_text()), re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def page_links(path: Path) -> list[tuple[int, str]]:
    prose = _outside_fences(path.read_text(encoding="utf-8"))
    prose = INLINE.sub(lambda m: " " * len(m.group(0)), prose)  # code spans are not links
    return [(prose[:m.start()].count("\n") + 1, m.group(2)) for m in LINK.finditer(prose)]


ALL_LINKS = [(p, line, target) for p in PAGES for line, target in page_links(p)]


def test_the_pages_link_to_each_other():
    readme = {t for p, _, t in ALL_LINKS if p.name == "README.md"}
    for page in ("docs/results.md", "docs/reproduce.md", "docs/operations.md",
                 "docs/benchmarks.md", "docs/baselines.md", "docs/design.md", "CHANGELOG.md"):
        assert page in readme, f"README.md does not link {page}"


@pytest.mark.parametrize("page,line,target", ALL_LINKS,
                         ids=[f"{p.relative_to(ROOT)}:{n}:{t}" for p, n, t in ALL_LINKS])
def test_link_resolves(page: Path, line: int, target: str):
    if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
        return
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    assert dest.exists(), f"{page.name}:{line}: {file} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{page.name}:{line}: an anchor into a non-markdown file"
        assert anchor in anchors(dest), (
            f"{page.name}:{line}: no heading #{anchor} in {dest.name}; it has {sorted(anchors(dest))}")


def test_slugs_follow_github():
    assert slug("Weights & Biases") == "weights--biases"
    assert slug("ML-1M on a CPU (`cpu_quality.py`)") == "ml-1m-on-a-cpu-cpu_qualitypy"
    assert slug("Why AlphaRec-style ranks ML-1M's new items low") == \
        "why-alpharec-style-ranks-ml-1ms-new-items-low"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}); " \
        "move reference material into docs/"

