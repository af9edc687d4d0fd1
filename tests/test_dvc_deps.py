"""dvc.yaml is honest: each stage lists exactly the code its entry module runs and the paths it
reads and writes, derived here from the code itself.

Code: the transitive imports (at any depth of a function, so lazy imports count) of the stage's
``pipelines/<stage>.py`` inside ``components/`` and ``pipelines/``, plus the model classes the stage
builds through ``FAMILY_CLASSES`` (imported by name, so no static walk can see them: ``BUILDS``).
Packages whose ``__init__.py`` is only a docstring run no code and count for nothing.
Paths: the stage parser's declared inputs and outputs (``pipelines.common.StageParser``).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import yaml

from components import layout
from components.models import FAMILY_CLASSES

ROOT = Path(__file__).resolve().parents[1]
CODE = ("components", "pipelines")
FAMILY = "${item.family}"
#: model families each stage builds by name through ``components.models.FAMILY_CLASSES``, beside what it imports
BUILDS: dict[str, set[str]] = {"fetch": set(), "classifier": {"classifier"}, "train": {FAMILY},
                               "sample": {FAMILY}, "evaluate": {FAMILY, "classifier"}, "report": set()}
#: listed by every per-model stage, though only GAN subclasses import it: dvc.yaml cannot pick a
#: path by family, and missing it from cgan's and dcgan's stages would leave their results stale
SHARED_BY_FAMILIES = "components/models/gan.py"


def module_file(module: str) -> Path | None:
    """The file of ``module`` (a package's ``__init__.py``) if it is one of ours."""
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runs_code(path: Path) -> bool:
    """False for a module that is only a docstring (an empty package marker)."""
    body = ast.parse(path.read_text()).body
    return not all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in (child, *runtime_nodes(child)))
            continue
        yield node
        yield from runtime_nodes(node)


@cache
def imported_modules(path: Path) -> frozenset[str]:
    """Our modules that ``path`` imports anywhere it runs (its parents' packages included: Python runs them)."""
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from components import tracking` imports components.tracking when that is a module
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] in CODE:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(m for m in found if module_file(m) is not None)


def code_closure(modules: set[str]) -> set[str]:
    """Repo-relative files of ``modules`` and everything they import, transitively, that run code."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module_file(module)))
    files = {module_file(m) for m in seen}
    return {str(f.relative_to(ROOT)) for f in files if runs_code(f)}


def expand(dep: str) -> set[str]:
    """A dvc.yaml code dependency as the set of code files it stands for."""
    path = ROOT / dep
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return {str(f.relative_to(ROOT)) for f in files if "__pycache__" not in f.parts and runs_code(f)}


def stages() -> list[tuple[str, str, dict, dict[str, str]]]:
    """``(stage name, stage kind, definition, substitutions)`` for every stage dvc.yaml resolves to."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = []
    for kind, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            assert stage["foreach"] == "${train}", kind
            for key, item in params["train"].items():
                out.append((f"{kind}@{key}", kind, stage["do"],
                            {"${key}": key, FAMILY: item["family"], "${profile}": params["profile"]}))
        else:
            out.append((kind, kind, stage, {"${profile}": params["profile"]}))
    return out


def substitute(value: str, subs: dict[str, str]) -> str:
    for template, text in subs.items():
        value = value.replace(template, text)
    assert "${" not in value, value
    return value


STAGES = stages()


@pytest.mark.parametrize(("name", "kind", "stage", "subs"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_lists_exactly_the_code_it_runs(name: str, kind: str, stage: dict, subs: dict[str, str]) -> None:
    entry = re.fullmatch(r"python -m (pipelines\.\w+)(?: --model \$\{key\})?", stage["cmd"])
    assert entry, f"{name}: unexpected cmd {stage['cmd']!r}"
    built = {FAMILY_CLASSES[substitute(family, subs)][0] for family in BUILDS[kind]}
    derived = code_closure({entry.group(1), *built})
    listed = set().union(*(expand(substitute(d, subs)) for d in stage["deps"] if d.split("/")[0] in CODE))
    assert not derived - listed, f"{name}: dvc.yaml misses {sorted(derived - listed)}"
    allowed = {SHARED_BY_FAMILIES} if FAMILY in BUILDS[kind] else set()
    assert not listed - derived - allowed, \
        f"{name}: dvc.yaml lists code it never imports: {sorted(listed - derived - allowed)}"


def test_the_one_shared_family_module_is_needed_by_every_family_that_subclasses_gan() -> None:
    """The allowance above is no blanket: the module is what the GAN families import, and no other is."""
    needs = {family: {f for f in code_closure({module}) if f.startswith("components/models/")} - {
        f"components/models/{family}.py", "components/models/__init__.py", "components/models/base.py",
        "components/models/sampling.py"}  # the interface: base.py and the sampling path every family shares
        for family, (module, _) in FAMILY_CLASSES.items()}
    assert needs == {family: ({SHARED_BY_FAMILIES} if family in ("cgan", "dcgan") else set()) for family in FAMILY_CLASSES}


@pytest.mark.parametrize(("name", "kind", "stage", "subs"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_lists_exactly_the_paths_it_reads_and_writes(name: str, kind: str, stage: dict,
                                                           subs: dict[str, str]) -> None:
    parser = importlib.import_module(f"pipelines.{kind}").arguments()
    model = subs.get("${key}", "")
    reads = {path.replace("{model}", model) for path in (*parser.inputs.values(), *parser.reads)}
    writes = {path.replace("{model}", model) for path in parser.outputs.values()}
    deps = {substitute(d, subs) for d in stage["deps"] if d.split("/")[0] not in CODE}
    outs = {substitute(next(iter(o)) if isinstance(o, dict) else o, subs)
            for section in ("outs", "metrics", "plots") for o in stage.get(section, [])}
    assert deps == reads, f"{name}: dvc.yaml deps {sorted(deps)} but the stage reads {sorted(reads)}"
    assert outs == writes, f"{name}: dvc.yaml outputs {sorted(outs)} but the stage writes {sorted(writes)}"


def test_paths_are_spelled_only_in_the_layout_module() -> None:
    """No stage or library module spells a pipeline path itself: they come from components.layout."""
    folders = {layout.DATA, layout.MODELS, layout.SAMPLES, layout.METRICS, layout.PLOTS, layout.REPORTS}
    # a folder followed by a slash, or a nested folder itself ('samples' alone is also an MLflow key)
    pattern = re.compile(rf"^(?:{'|'.join(map(re.escape, sorted(folders)))})/|^(?:data/prepared|plots/train)$")
    offenders = []
    for path in sorted(p for folder in CODE for p in (ROOT / folder).rglob("*.py")):
        if path == ROOT / "components" / "layout.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        offenders += [f"{path.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                      and pattern.match(n.value)]
    assert not offenders, offenders


def recorded_copy(tmp_path: Path) -> tuple[Path, Callable[..., str]]:
    """A git + DVC copy of the project's pipeline and code (as a clone has them: no bytecode) with
    every stage recorded as up to date (placeholder outputs, ``dvc commit``); returns the copy and
    a ``dvc`` runner in it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for tracked in ("dvc.yaml", "params.yaml", "profiles", *CODE):
        copy = shutil.copytree if (ROOT / tracked).is_dir() else shutil.copy
        copy(ROOT / tracked, repo / tracked, **({"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")}
                                                  if copy is shutil.copytree else {}))
    dvc = [str(Path(sys.executable).parent / "dvc")]
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        done = subprocess.run([*dvc, *args], check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run("init", "-q")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    # every output as a placeholder, then `dvc commit`: the lock records the current code's hashes
    names = [name for name, *_ in STAGES]
    for name, _, stage, subs in STAGES:
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                path = repo / substitute(next(iter(out)) if isinstance(out, dict) else out, subs)
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text(name)
    (repo / "data" / "prepared" / "meta.json").write_text("{}\n")
    run("commit", "--force", *names)
    assert "up to date" in run("status").lower()
    return repo, run


@pytest.mark.slow
def test_bytecode_beside_the_sources_leaves_every_stage_up_to_date(tmp_path: Path) -> None:
    """Python writes ``__pycache__`` beside the modules a stage imports (where
    PYTHONDONTWRITEBYTECODE is unset, as on a user's machine): .dvcignore keeps it out of the
    directory dependencies' hashes, so nothing is re-run for it."""
    repo, run = recorded_copy(tmp_path)
    modules = sorted(".".join(p.relative_to(repo).with_suffix("").parts).removesuffix(".__init__")
                     for folder in CODE for p in (repo / folder).rglob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    compiled = {p.parent.parent.relative_to(repo).as_posix() for p in repo.rglob("__pycache__/*.pyc")}
    assert {"components/metrics", "components/training", "components/distributed", "pipelines"} <= compiled
    assert "up to date" in run("status").lower()


@pytest.mark.slow
def test_touching_the_metrics_code_makes_dvc_flag_the_classifier_and_every_evaluate(tmp_path: Path) -> None:
    """With every stage recorded as up to date, an edit of components/metrics/fid.py (an overlay
    section, a family's model module) leaves exactly the stages that run it out of date."""
    repo, run = recorded_copy(tmp_path)
    fid = repo / "components" / "metrics" / "fid.py"
    original = fid.read_text()
    fid.write_text(original + "\n# touched\n")
    models = list(yaml.safe_load((repo / "params.yaml").read_text())["train"])
    assert stale_stages(run("status")) == {"classifier", *(f"evaluate@{m}" for m in models)}

    # an overlay edit re-runs only the stages that read what it changed
    fid.write_text(original)
    overlay = repo / "profiles" / f"{yaml.safe_load((repo / 'params.yaml').read_text())['profile']}.yaml"
    data = yaml.safe_load(overlay.read_text())
    data["families"]["gan"] = {**(data["families"]["gan"] or {}), "epochs": 1}
    overlay.write_text(yaml.safe_dump(data))
    assert stale_stages(run("status")) == {f"train@{m}" for m, family in families(repo).items() if family == "gan"} | {
        "report"}

    # a family's module: only its models' stages; GAN's (which CGAN and DCGAN subclass): every model's
    shutil.copy(ROOT / overlay.relative_to(repo), overlay)
    assert "up to date" in run("status").lower()
    per_model = {f"{s}@{m}" for s in ("train", "sample", "evaluate") for m in models}
    dcgan = repo / "components" / "models" / "dcgan.py"
    dcgan.write_text(dcgan.read_text() + "\n# touched\n")
    assert stale_stages(run("status")) == {s for s in per_model if families(repo)[s.split("@")[1]] == "dcgan"}
    shutil.copy(ROOT / "components" / "models" / "dcgan.py", dcgan)
    gan = repo / "components" / "models" / "gan.py"
    gan.write_text(gan.read_text() + "\n# touched\n")
    assert stale_stages(run("status")) == per_model


def stale_stages(status: str) -> set[str]:
    """The stage names ``dvc status`` reports (its detail lines are indented)."""
    return {line.strip().rstrip(":") for line in status.splitlines() if line and not line[0].isspace()}


def families(repo: Path) -> dict[str, str]:
    return {m: s["family"] for m, s in yaml.safe_load((repo / "params.yaml").read_text())["train"].items()}
