"""docs/reference/configuration.md: every option of ``lit-scsdpo fit``, from the CLI's own parser.

    python scripts/config_reference.py           # print the page
    python scripts/config_reference.py --write   # write docs/reference/configuration.md
    python scripts/config_reference.py --check   # exit 1 when the page is stale
    make docs-reference                          # --write, and the API pages

Each shipped launch (``LAUNCHES``: the ``--config`` files a user passes, in their order) is
parsed by ``lit_scsdpo.cli.run`` as ``lit-scsdpo fit --config ...`` would parse it, and stopped
right after parsing: no class is instantiated, so no weights, data or network are needed. The
option tables come from that parser: the ``fit`` options (trainer, data, top level) as
``lit-scsdpo fit --help`` lists them, and, for each class a shipped config selects (the model
class, the task, the engine, the callbacks, the logger), the options that
``lit-scsdpo fit --model.help CLASS`` (``--data.task.help``, ...) lists: key, type, default and
the docstring help. The last part gives the values the shipped configurations set.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference" / "configuration.md"
COMMAND = "make docs-reference"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import api_pages  # noqa: E402


def _paper(kind: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "paper" / kind).glob("*.yaml"))


def _recipe(model: str, algo: str, task: str) -> list[str]:
    return ["configs/paper/base.yaml", f"configs/paper/model/{model}.yaml",
            f"configs/paper/algo/{algo}.yaml", f"configs/paper/task/{task}.yaml"]


PAPER_MODEL, PAPER_ALGO, PAPER_TASK = "qwen3_8b", "scsdpo", "chemistry"

#: (title, what the rows are, [(column, --config files)]). rows "set": keys some column sets
#: away from its default; "differ": keys whose value differs between the columns.
LAUNCHES: list[tuple[str, str, list[tuple[str, list[str]]]]] = [
    ("`configs/tiny/base.yaml` + one algorithm file: the embedded default (CPU)", "set", [
        ("grpo.yaml", ["configs/tiny/base.yaml", "configs/tiny/grpo.yaml"]),
        ("sdpo.yaml", ["configs/tiny/base.yaml", "configs/tiny/sdpo.yaml"]),
        ("scsdpo.yaml", ["configs/tiny/base.yaml", "configs/tiny/scsdpo.yaml"]),
        ("sdpo.yaml + worked.yaml", ["configs/tiny/base.yaml", "configs/tiny/sdpo.yaml", "configs/tiny/worked.yaml"]),
    ]),
    ("`configs/smollm2/base.yaml` + `configs/paper/algo/<algo>.yaml` (CPU)", "set", [
        (f"algo/{algo}.yaml", ["configs/smollm2/base.yaml", f"configs/paper/algo/{algo}.yaml"])
        for algo in ("grpo", "sdpo", "scsdpo")
    ]),
    (f"`configs/paper`: the algorithm files (with model/{PAPER_MODEL}.yaml, task/{PAPER_TASK}.yaml)", "set", [
        (f"algo/{algo}.yaml", _recipe(PAPER_MODEL, algo, PAPER_TASK)) for algo in _paper("algo")
    ]),
    (f"`configs/paper`: the model files (with algo/{PAPER_ALGO}.yaml, task/{PAPER_TASK}.yaml)", "differ", [
        (f"model/{model}.yaml", _recipe(model, PAPER_ALGO, PAPER_TASK)) for model in _paper("model")
    ]),
    (f"`configs/paper`: the task files (with model/{PAPER_MODEL}.yaml, algo/{PAPER_ALGO}.yaml)", "differ", [
        (f"task/{task}.yaml", _recipe(PAPER_MODEL, PAPER_ALGO, task)) for task in _paper("task")
    ]),
]

#: shipped files that are another launch as one file, logging elsewhere (tests/test_recipes.py)
SAME_AS = {"configs/paper/scsdpo_qwen3_8b_sciknoweval.yaml": _recipe("qwen3_8b", "scsdpo", "chemistry")}

#: the engine the DataModule builds when ``data.engine`` is null
DEFAULT_ENGINE = "lit_scsdpo.rollout.HFGenerateEngine"

#: subclass-typed keys, in page order, with their section title
SECTIONS = {
    "model": "Model (`model`)",
    "data.task": "Task (`data.task`)",
    "data.engine": "Rollout engine (`data.engine`)",
    "trainer.callbacks": "Callbacks (`trainer.callbacks`)",
    "trainer.logger": "Logger (`trainer.logger`)",
}
BRIEF = ("lightning.",)  # classes whose help is Lightning's: its first sentence
NOT_OPTIONS = ("config", "print_config", "__path__")  # parsed keys that are not settings


class _Parsed(Exception):
    def __init__(self, cli: Any) -> None:
        super().__init__("parsed")
        self.cli = cli


def _args(files: list[str]) -> list[str]:
    return ["fit"] + [a for f in files for a in ("--config", str(ROOT / f))]


def parse(files: list[str]) -> Any:
    """The CLI object of ``lit-scsdpo fit --config FILE ...``, stopped after parsing."""
    from lightning.pytorch.cli import LightningCLI

    from lit_scsdpo import cli as cli_module

    original = LightningCLI.parse_arguments

    def parse_then_stop(self: Any, parser: Any, args: Any) -> None:
        original(self, parser, args)
        raise _Parsed(self)

    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when it is given args and sys.argv has some too
    try:
        with mock.patch.object(LightningCLI, "parse_arguments", parse_then_stop), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli_module.run(_args(files))
    except _Parsed as done:
        return done.cli
    finally:
        sys.argv = argv
    raise RuntimeError(f"lit_scsdpo.cli.run({_args(files)}) did not parse its arguments")


def parse_launches() -> tuple[Any, dict[tuple[str, ...], dict[str, Any]]]:
    """The CLI object of the first launch, and each launch's parsed ``fit`` configuration: the
    first through ``lit_scsdpo.cli.run``, the others by the same parser (what LightningCLI's
    ``parse_arguments`` does), which is built once."""
    cli = None
    configs: dict[tuple[str, ...], dict[str, Any]] = {}
    for _, _, columns in LAUNCHES:
        for _, files in columns:
            if tuple(files) in configs:
                continue
            if cli is None:
                cli = parse(files)
                config = cli.config
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    config = cli.parser.parse_args(_args(files))
            configs[tuple(files)] = _plain(config["fit"])
    assert cli is not None
    return cli, configs


# -- the parser's options ---------------------------------------------------------------------

@dataclass
class Option:
    key: str
    type: str
    default: Any
    required: bool
    help: str


def _fit_parser(cli: Any) -> Any:
    return cli._subcommand_parsers["fit"]


def _is_option(action: Any) -> bool:
    from jsonargparse import ActionConfigFile
    from jsonargparse._actions import _ActionConfigLoad, _ActionHelpClassPath, _ActionPrintConfig

    skipped = (argparse._HelpAction, ActionConfigFile, _ActionConfigLoad, _ActionHelpClassPath, _ActionPrintConfig)
    return bool(action.option_strings) and not isinstance(action, skipped) and action.help != argparse.SUPPRESS


def _options(parser: Any) -> list[Option]:
    formatter = parser.formatter_class(prog="lit-scsdpo")
    out = []
    for action in parser._actions:
        if not _is_option(action):
            continue
        type_str = re.sub(r"<class '([\w.]+)'>", r"\1", formatter._get_type_str(action) or "")
        out.append(Option(key=action.dest, type=type_str,
                          default=action.default, required=bool(action.required), help=action.help or ""))
    return out


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _class_parser(fit: Any, key: str, class_path: str) -> Any:
    """The parser ``lit-scsdpo fit --KEY.help CLASS_PATH`` prints (jsonargparse's print_help)."""
    help_action = next(a for a in fit._actions if a.dest == f"{key}.help")
    sub = type(fit)(exit_on_error=False)
    kwargs = dict(getattr(help_action, "sub_add_kwargs", None) or {})
    kwargs.pop("linked_targets", None)
    sub.add_class_arguments(_import(class_path), **kwargs)
    return sub


# -- the launches -----------------------------------------------------------------------------

_MISSING = object()  # not an option of that class


def _subclass_specs(value: Any, key: str, found: dict[str, list[str]]) -> None:
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str):
            found.setdefault(key, [])
            if value["class_path"] not in found[key]:
                found[key].append(value["class_path"])
            return
        for k, v in value.items():
            _subclass_specs(v, f"{key}.{k}" if key else k, found)
    elif isinstance(value, list):
        for item in value:
            _subclass_specs(item, key, found)


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


_CLASS = object()  # the "default" of a class row: always shown


def _flat_values(config: dict[str, Any], defaults: "Defaults") -> dict[str, tuple[Any, Any]]:
    """key -> (value, default) of every leaf of a parsed launch."""
    out: dict[str, tuple[Any, Any]] = {}

    def spec(value: dict[str, Any], key: str, label: str, row: bool = True) -> None:
        if row:
            out[label] = (_short(value["class_path"]), _CLASS)
        for k, v in _flatten(value.get("init_args") or {}).items():
            out[f"{label}.init_args.{k}"] = (v, defaults.of_class(key, value["class_path"], k))

    def walk(value: Any, key: str) -> None:
        if _is_spec(value):
            spec(value, key, key)
        elif isinstance(value, list) and value and all(_is_spec(i) for i in value):
            out[key] = (", ".join(_short(i["class_path"]) for i in value), _CLASS)
            for item in value:
                spec(item, key, f"{key}[{_short(item['class_path'])}]", row=False)
        elif isinstance(value, dict) and value and key not in defaults.fit:  # a group: trainer, data.sampling
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        else:
            out[key] = (value, defaults.fit.get(key, _MISSING))

    walk({k: v for k, v in config.items() if k not in NOT_OPTIONS}, "")
    return out


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_path"), str)


def _same(a: Any, b: Any) -> bool:
    """Equal as YAML values (``0`` is not ``false``, ``(1, 2)`` is ``[1, 2]``)."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return json.dumps(_plain(a), default=str, sort_keys=True) == json.dumps(_plain(b), default=str, sort_keys=True)


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict) and v and not _is_spec(v):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Defaults:
    def __init__(self, fit: Any) -> None:
        self.fit_parser = fit
        self.fit = {o.key: _plain(o.default) for o in _options(fit)}
        self._classes: dict[tuple[str, str], dict[str, Any]] = {}

    def class_options(self, key: str, class_path: str) -> list[Option]:
        return _options(_class_parser(self.fit_parser, key, class_path))

    def of_class(self, key: str, class_path: str, arg: str) -> Any:
        if (key, class_path) not in self._classes:
            self._classes[key, class_path] = {o.key: _plain(o.default) for o in self.class_options(key, class_path)}
        return self._classes[key, class_path].get(arg, _MISSING)


def _plain(value: Any) -> Any:
    """A default as the YAML of a config file would hold it."""
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- Markdown ---------------------------------------------------------------------------------

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|obj|data|exc|paramref|ref|math):`~?([^`]+)`")


def _text(help_text: str, brief: bool = False) -> str:
    """Docstring help as one Markdown table cell."""
    text = " ".join(help_text.replace("%%", "%").split())
    text = _ROLE.sub(r"`\1`", text)
    if brief:
        text = re.sub(r"\s*Default: .*$", "", text)
        text = re.sub(r"^Defaults to [^.]*\.\s*", "", text)
        text = re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", text, maxsplit=1)[0]
    parts = re.split(r"(``.+?``|`[^`]+`)", text)  # keep code spans as they are
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
    return "".join(parts)


def _value(value: Any) -> str:
    if value is _MISSING:
        return "–"
    value = _plain(value)
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)[1:-1] if value else '""'
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _default(option: Option) -> str:
    return "required" if option.required else _value(option.default)


def _table(options: list[Option], brief: bool = False) -> list[str]:
    lines = ["| key | type | default | help |", "|---|---|---|---|"]
    for o in options:
        lines.append(f"| `{o.key}` | `{o.type}` | {_default(o)} | {_text(o.help, brief)} |")
    return lines + [""]


def _api_link(class_path: str) -> str:
    """`` (API)`` link to the class on its API page, when the class has one."""
    cls = _import(class_path)
    page = api_pages.page_of(getattr(cls, "__module__", ""))
    if page is None:
        return ""
    target = page.split("reference/", 1)[1]
    return f" ([API]({target}#{cls.__module__}.{cls.__qualname__}))"


def _class_sections(key: str, classes: list[str], defaults: Defaults) -> list[str]:
    out = [f"## {SECTIONS[key]}", ""]
    for class_path in classes:
        prefix = "init_args." if key == "trainer.callbacks" else f"{key}.init_args."
        options = [Option(prefix + o.key, o.type, o.default, o.required, o.help)
                   for o in defaults.class_options(key, class_path)]
        note = " (the default, `data.engine: null`)" if class_path == DEFAULT_ENGINE else ""
        out += [f"### `{class_path}`", "", f"`{key}.class_path: {class_path}`{note}{_api_link(class_path)}.", ""]
        if key == "trainer.callbacks":
            out += ["An item of the `trainer.callbacks` list: `{class_path: ..., init_args: {...}}`.", ""]
        out += _table(options, brief=class_path.startswith(BRIEF)) if options else ["No options.", ""]
    return out


def render() -> str:
    """The page, from the launches parsed now."""
    first, dumps = parse_launches()
    fit = _fit_parser(first)
    defaults = Defaults(fit)

    selected: dict[str, list[str]] = {}
    for config in dumps.values():
        _subclass_specs(config, "", selected)
    if DEFAULT_ENGINE not in selected.setdefault("data.engine", []):
        selected["data.engine"].insert(0, DEFAULT_ENGINE)
    unknown = sorted(set(selected) - set(SECTIONS) - {"trainer.strategy", "trainer.plugins", "trainer.profiler"})
    if unknown:
        raise RuntimeError(f"a shipped config selects a class for {unknown}: add the key to SECTIONS")

    dm = first.datamodule_class
    fit_options = _options(fit)
    out = [
        "# Configuration reference",
        "",
        "Every option of `lit-scsdpo fit`, generated from the CLI's parser by",
        f"`scripts/config_reference.py` (do not edit this page; regenerate it with `{COMMAND}`).",
        "A key is a path in a `--config` YAML file and an option on the command line:",
        "`data.questions_per_step: 16` or `--data.questions_per_step 16`,",
        "`--model.init_args.optim.lr 1e-5`. The same text, per class, comes from",
        "`lit-scsdpo fit --help`, `lit-scsdpo fit --model.help lit_scsdpo.SDPO`,",
        "`lit-scsdpo fit --data.task.help ArithmeticTask` (and `--data.engine.help`,",
        "`--trainer.callbacks.help`, `--trainer.logger.help`); `--print_config` prints a whole",
        "configuration. Defaults are written as in a YAML file; the classes listed are the ones",
        "the shipped configs select. Last, [the shipped configurations](#shipped-configurations)",
        "and the values they set.",
        "",
        "## Top level",
        "",
        "The options of the `fit` command itself; those of Lightning (`seed_everything` and the",
        "arguments of `Trainer.fit`) with the first sentence of Lightning's help.",
        "",
    ]
    from lightning.pytorch import Trainer

    lightning_keys = {"seed_everything", *inspect.signature(Trainer.fit).parameters}
    top = [o for o in fit_options if "." not in o.key]
    out += _table([o for o in top if o.key not in lightning_keys])[:-1]
    out += _table([o for o in top if o.key in lightning_keys], brief=True)[2:]
    out += _class_sections("model", selected.get("model", []), defaults)
    out += ["## Data (`data`)", "",
            f"`{dm.__module__}.{dm.__qualname__}`{_api_link(f'{dm.__module__}.{dm.__qualname__}')}: the",
            "DataModule is fixed; `data.task` and `data.engine` take a class (the next sections).", "",
            *_table([o for o in fit_options if o.key.startswith("data.")])]
    for key in SECTIONS:
        if key != "model" and selected.get(key):
            out += _class_sections(key, selected[key], defaults)
    out += ["## Trainer (`trainer`)", "",
            "Lightning's `Trainer` arguments, with the defaults of `lit-scsdpo` (its `TRAINER_DEFAULTS`);",
            "the help is the first sentence of Lightning's.", "",
            *_table([o for o in fit_options if o.key.startswith("trainer.")], brief=True)]
    out += _shipped(dumps, defaults)
    return "\n".join(out).rstrip() + "\n"


def _shipped(dumps: dict[tuple[str, ...], dict[str, Any]], defaults: Defaults) -> list[str]:
    out = ["## Shipped configurations", "",
           "The values of each launch, as `--print_config` prints them. A launch is its `--config`",
           "files in this order (`lit-scsdpo fit --config A --config B`); `–`: not an option of",
           "that column's class.", ""]
    for title, rows, columns in LAUNCHES:
        flats = [_flat_values(dumps[tuple(files)], defaults) for _, files in columns]
        keys = list(dict.fromkeys(k for flat in flats for k in flat))
        shown = []
        for k in keys:
            cells = [flat.get(k, (_MISSING, _MISSING)) for flat in flats]
            if rows == "set":  # some column sets it away from its default (class rows: always)
                keep = any(v is not _MISSING and (d is _CLASS or not _same(v, d)) for v, d in cells)
            else:  # the columns differ
                keep = any(not _same(v, cells[0][0]) for v, _ in cells)
            if keep:
                shown.append((k, [v for v, _ in cells]))
        out += [f"### {title}", ""]
        if rows == "set":
            out += ["The keys some column sets away from the default. First column: `lit-scsdpo fit "
                    + " ".join(f"--config {f}" for f in columns[0][1]) + "`.", ""]
        else:
            out += ["The keys whose value differs between these files.", ""]
        out += ["| key | " + " | ".join(f"`{label}`" for label, _ in columns) + " |",
                "|---|" + "---|" * len(columns)]
        out += [f"| `{k}` | " + " | ".join(_value(v) for v in values) + " |" for k, values in shown]
        out.append("")
    for file, files in SAME_AS.items():
        out += [f"`{file}` is the launch `" + " ".join(f"--config {f}" for f in files)
                + "` as one file that logs to its own folder.", ""]
    return out


def shipped_files() -> set[str]:
    """Every config file the page covers."""
    files = {f for _, _, columns in LAUNCHES for _, fs in columns for f in fs}
    return files | set(SAME_AS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    mode.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        page = render()
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(page, encoding="utf-8")
        print(f"wrote {OUT.relative_to(ROOT)}")
    elif args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != page:
            print(f"{OUT.relative_to(ROOT)} is stale: regenerate it with {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
