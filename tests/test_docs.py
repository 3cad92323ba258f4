"""Docs that cannot rot: README.md and docs/*.md are checked against the code.

- every relative link (and its #anchor) and every repository path named in backticks exists;
- every `python tools/X.py ...` / `python benchmarks/X.py ...` command in a code block
  parses with the tool's own argparse parser, flags and all, without running the job;
- every config key named (`SOLVER.BASE_LR`, ...) exists in the defaults; docs/detectron2.md
  is left out of this one, since it names detectron2's own keys;
- the race's generated tables (docs/RESULTS.md) are linked, never copied;
- the README stays a newcomer's page: at most 200 lines, the COCO command on its first screen;
- every Python block of the pages runs, against a tiny model and files made for it (detectron2.md's aside);
- code, configs and pytest.ini point to sections that exist, and docs/layout.md draws the real import graph.
"""
import argparse
import fnmatch
import glob
import inspect
import os
import re
import shlex
import sys

import pytest

from conftest import REPO, load_benchmark, load_tool
from zenith_det.config import get_cfg

PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
GENERATED = {"docs/RESULTS.md", "docs/RESULTS_provenance.md"}  # written by tools/compare.py
WRITTEN = [p for p in PAGES if p not in GENERATED]
ROOTS = ("tools/", "benchmarks/", "configs/", "zenith_det/", "tests/", "docs/", ".ci/")


def _text(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


def _slug(heading):
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page):
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", _text(page), re.M)}


def _prose(text):
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _code_blocks(text):
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(_text(page))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path else os.path.join(REPO, page)
        if not os.path.exists(resolved):
            missing.append(target)
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(os.path.relpath(resolved, REPO)):
            missing.append(target + " (no such heading)")
    assert not missing, f"{page}: {missing}"


# Files outside the pages that point into them: code, configs and the test settings.
POINTING = sorted({os.path.relpath(p, REPO) for pattern in ("zenith_det/**/*.py", "tools/*.py", "benchmarks/*.py",
                                                              "tests/*.py", "configs/**/*.yaml", "*.ini", "setup.py")
                   for p in glob.glob(os.path.join(REPO, pattern), recursive=True)} - {"tests/test_docs.py"})
# "docs/x.md", "docs/x.md#anchor", "README.md" or "README", each optionally followed by a section
# named in quotes ("docs/x.md, 'Some heading'"): the form code uses to send a reader to the docs.
_POINTER = re.compile(r"""((?:docs/[\w.-]+\.md|README(?:\.md)?))(?:#([\w-]+))?(?:,\s*(["'])([^"'\n]+)\3)?""")


def _pointers(text):
    for m in _POINTER.finditer(text):
        page, anchor, section = m.group(1), m.group(2), m.group(4)
        yield ("README.md" if page.startswith("README") else page), anchor or (_slug(section) if section else None), m.group(0)


def test_pointing_files_are_found():
    assert {"zenith_det/detectron2/__init__.py", "pytest.ini", "configs/synthetic/Base-Synthetic.yaml"} <= set(POINTING)


@pytest.mark.parametrize("source", POINTING)
def test_code_points_to_pages_and_sections_that_exist(source):
    """A section named in code, an ini or a config ("README, 'Installing detectron2'") exists where it says."""
    missing = []
    for page, anchor, said in _pointers(_text(source)):
        if not os.path.exists(os.path.join(REPO, page)):
            missing.append(f"{said}: no {page}")
        elif anchor and anchor not in _anchors(page):
            missing.append(f"{said}: {page} has no such heading")
    assert not missing, f"{source}: {missing}"


def _named_paths(text):
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip(".,:;")
        if token.startswith(ROOTS) and not re.search(r"[<{$]", token):
            yield token


@pytest.mark.parametrize("page", WRITTEN)
def test_paths_named_exist(page):
    text = _text(page)
    named = set(_named_paths(text))
    for block in _code_blocks(text):
        named.update(t for t in re.findall(r"(?:^|\s)((?:tools|benchmarks|configs)/[\w./*-]+)", block)
                     if not t.endswith("/"))
    missing = [p for p in sorted(named) if not glob.glob(os.path.join(REPO, p))]
    assert not missing, f"{page} names paths that do not exist: {missing}"


def _commands(text):
    """(script, argv) of every `python tools|benchmarks/X.py ...` in the page's code blocks."""
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words):
                if re.fullmatch(r"(tools|benchmarks)/\w+\.py", word) and i and (
                        words[i - 1] in ("python", "python3") or words[0] == "torchrun"):
                    yield word, words[i + 1:]
                    break


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch):
    """Make argparse stop with _Parsed once a tool's top-level parse succeeds: nothing runs."""
    depth = [0]
    for name in ("parse_args", "parse_intermixed_args"):
        original = getattr(argparse.ArgumentParser, name)

        def wrapper(self, *args, _original=original, **kwargs):
            depth[0] += 1
            try:
                result = _original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed(result)
            return result

        monkeypatch.setattr(argparse.ArgumentParser, name, wrapper)


def _entry_point(module):
    return getattr(module, "cli", None) or module.main


COMMANDS = sorted({(page, script, tuple(argv)) for page in WRITTEN for script, argv in _commands(_text(page))})


def test_the_pages_have_commands_to_check():
    scripts = {script for _, script, _ in COMMANDS}
    assert {"tools/train_net.py", "tools/eval_coco.py", "tools/compare.py", "tools/visualize_data.py",
            "tools/visualize_predictions.py", "benchmarks/benchmark_optimizer.py"} <= scripts


@pytest.mark.parametrize("page, script, argv", COMMANDS, ids=[f"{p}:{s}:{' '.join(a)[:40]}" for p, s, a in COMMANDS])
def test_commands_parse(page, script, argv, monkeypatch, capsys):
    if script == "tools/train_d2.py":
        pytest.importorskip("detectron2")
    folder, name = os.path.split(script)
    module = load_tool(name[:-3]) if folder == "tools" else load_benchmark(name[:-3])
    entry = _entry_point(module)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    _parse_only(monkeypatch)
    with pytest.raises(_Parsed):
        try:
            entry(list(argv)) if inspect.signature(entry).parameters else entry()
        except SystemExit as e:
            pytest.fail(f"{page}: `{script} {' '.join(argv)}` does not parse (exit {e.code}): "
                        f"{capsys.readouterr().err.strip()}")


def _config_keys():
    keys = set()

    def walk(node, prefix):
        for key, value in node.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                walk(value, prefix + key + ".")

    walk(get_cfg(), "")
    return keys


@pytest.mark.parametrize("page", [p for p in WRITTEN if p != "docs/detectron2.md"])
def test_config_keys_exist(page):
    keys = _config_keys()
    named = set(re.findall(r"\b((?:MODEL|SOLVER|TEST|DATASETS|INPUT|DATALOADER)(?:\.[A-Z0-9_*]+)+)", _text(page)))
    unknown = [k for k in sorted(named) if not any(fnmatch.fnmatchcase(key, k) for key in keys)]
    assert not unknown, f"{page} names config keys that do not exist: {unknown}"


def test_generated_tables_are_linked_not_copied():
    rows = [line.strip() for line in _text("docs/RESULTS.md").splitlines()
            if line.startswith("| ") and re.search(r"\d", line)]
    for page in WRITTEN:
        text = _text(page)
        copied = [row for row in rows if row in text]
        assert not copied, f"{page} copies rows of docs/RESULTS.md: {copied[:2]}"


def test_readme_is_a_short_path_with_the_coco_command_on_its_first_screen():
    lines = _text("README.md").splitlines()
    assert len(lines) <= 200
    assert any("tools/train_net.py --config configs/mask_rcnn_zenith.yaml --num-gpus 8" in line for line in lines[:60])
    text = "\n".join(lines)
    for command in ('pip install -e ".[test]" && python tools/train_net.py --config configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml',
                    "python -m pytest -q"):
        assert command in text
    # The .ci/run contract: it runs exactly the README's test command.
    assert "python -m pytest -q" in _text(".ci/run")


# ----------------------------------------------------------------------------- the import graph

_ANYWHERE = {"errors", "exit_codes", "utils"}


def _imports_of_parts():
    """{part of zenith_det: the parts it imports}, every import statement (lazy ones too)."""
    import ast

    graph = {}
    package = os.path.join(REPO, "zenith_det")
    for root, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, REPO)[:-3].split(os.sep)  # ["zenith_det", part, ...]
            if len(rel) == 2 and rel[1] == "__init__":
                continue
            part = rel[1]
            module = rel[:-1] if rel[-1] == "__init__" else rel
            found = graph.setdefault(part, set())
            for node in ast.walk(ast.parse(_text(os.path.relpath(path, REPO)))):
                if isinstance(node, ast.ImportFrom) and node.level:
                    target = (module if rel[-1] == "__init__" else module[:-1])[:len(module) - node.level + (rel[-1] == "__init__")]
                    target = target + (node.module.split(".") if node.module else [])
                    names = [target[1]] if len(target) > 1 else [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zenith_det."):
                    names = [node.module.split(".")[1]]
                elif isinstance(node, ast.Import):
                    names = [a.name.split(".")[1] for a in node.names if a.name.startswith("zenith_det.")]
                else:
                    continue
                found.update(n for n in names if n != part and n not in _ANYWHERE)
    return {part: deps for part, deps in graph.items() if part not in _ANYWHERE}


def test_the_layout_page_draws_the_real_import_graph():
    block = _text("docs/layout.md").split("lazy imports included", 1)[1]
    drawn = {}
    for line in _code_blocks(block)[0].splitlines():
        part, _, deps = line.partition("->")
        deps = deps.strip()
        drawn[part.strip()] = set() if deps == "(nothing)" else {d.strip() for d in deps.split(",")}
    assert drawn == _imports_of_parts()


# ----------------------------------------------------------------------------- the pages' Python

# docs/detectron2.md's snippets use detectron2's own trainer classes (tests/test_detectron2.py runs them).
SNIPPETS = [(page, i, code) for page in WRITTEN if page != "docs/detectron2.md"
            for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", _text(page), flags=re.M | re.S))]


def test_the_pages_have_python_to_run():
    assert {page for page, _, _ in SNIPPETS} >= {"README.md", "docs/inference.md", "docs/training.md",
                                                 "docs/zenith.md", "docs/optimizers.md"}


def _snippet_world(tmp_path, monkeypatch):
    """A folder holding what the snippets name (photos, a checkpoint, an export) and the names they
    take as given (`model`, `loss`, `pil_image`); configs load at test size and train 2 iterations."""
    import torch
    from PIL import Image

    import zenith_det.config as config_module
    from conftest import FAST_CLI
    from zenith_det.data import metadata_from_cfg
    from zenith_det.modeling import build_model
    from zenith_det.modeling.meta import model_meta

    monkeypatch.chdir(tmp_path)
    real_load = config_module.load_config

    def tiny_load(config_file="", opts=()):
        return real_load(os.path.join(REPO, config_file) if config_file and not os.path.isabs(config_file)
                         else config_file, [*FAST_CLI, "SOLVER.MAX_ITER", "2", *opts])

    monkeypatch.setattr(config_module, "load_config", tiny_load)
    for name in ("photo.jpg", "a.jpg", "b.png"):
        Image.new("RGB", (120, 90), (90, 140, 200)).save(name)
    cfg = tiny_load(os.path.join(REPO, "configs/synthetic/mask_rcnn_tiny_FPN_zenith_9min.yaml"))
    metadata = metadata_from_cfg(cfg)
    weights = os.path.join("output", "synthetic_mask_rcnn_zenith", "model_final.pth")
    os.makedirs(os.path.dirname(weights))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg, metadata).state_dict(), "config": cfg.dump(), "iteration": 0,
                "meta": model_meta(cfg, metadata)}, weights)
    model = torch.nn.Linear(4, 2)
    return {"torch": torch, "model": model, "loss": model(torch.randn(3, 4)).square().sum(),
            "pil_image": Image.new("RGB", (64, 48)), "weights": weights}


@pytest.mark.slow
@pytest.mark.parametrize("page, index, code", SNIPPETS, ids=[f"{p}:{i}" for p, i, _ in SNIPPETS])
def test_python_snippets_run_against_a_tiny_model(page, index, code, tmp_path, monkeypatch, datasets_root):
    from zenith_det.solver.spec import OPTIMIZER_REGISTRY

    world = _snippet_world(tmp_path, monkeypatch)
    if "exported/model.onnx" in code:
        from zenith_det.inference.export import export_model

        export_model(world["weights"], "onnx", "exported")
    registered = set(OPTIMIZER_REGISTRY._obj_map)
    namespace = {k: v for k, v in world.items() if k != "weights"}
    try:
        exec(compile(code, f"{page} (python block {index})", "exec"), namespace)
    finally:
        for name in set(OPTIMIZER_REGISTRY._obj_map) - registered:  # what a snippet registered goes again
            del OPTIMIZER_REGISTRY._obj_map[name]
