"""The house rules: imports run one way, each fact has one home, every script answers --help."""
import ast
import os
import re

import pytest

from conftest import ROOT, run_script

# The flow of the project, from data to reporting: a file may import only files in earlier layers.
LAYERS = [["configurator"], ["checkpoint"], ["world"], ["prepare"], ["model"], ["teacher"], ["sae"], ["labels"], ["train"],
          ["tasks"], ["eval", "concepts"], ["steer"], ["sample"], ["compare"], ["bench", "pipeline"], ["arms"], ["payoff"]]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
SCRIPTS = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith(".py"))


def project_imports(name):
    """The project modules that file `name`.py imports, anywhere in it (inside functions too)."""
    tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYER)


def test_every_top_level_file_has_a_place_in_the_flow():
    assert set(SCRIPTS) == set(LAYER)


@pytest.mark.parametrize("name", SCRIPTS)
def test_imports_only_run_from_data_towards_reporting(name):
    upward = {m for m in project_imports(name) if LAYER[m] >= LAYER[name]}
    assert not upward, f"{name}.py imports {sorted(upward)}, which sit at or above it in the flow"


def test_only_model_py_reaches_into_the_transformers_modules():
    for name in SCRIPTS:
        if name != "model":
            assert ".transformer." not in open(os.path.join(ROOT, f"{name}.py")).read(), name


def test_the_device_is_resolved_in_one_place():
    for name in SCRIPTS:
        if name != "configurator":
            assert "is_available()" not in open(os.path.join(ROOT, f"{name}.py")).read(), name


def config_keys(name):
    """The keys a script defines between its first two `# ----` rulers: its defaults, in order."""
    block = open(os.path.join(ROOT, f"{name}.py")).read().split("\n# ---")[1]
    return re.findall(r"^(\w+) = ", block, flags=re.M)


LIBRARIES = {"checkpoint", "configurator", "model", "tasks", "teacher", "world"}  # imported only; the rest are scripts


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - LIBRARIES))
def test_every_script_answers_help_with_its_purpose_and_every_key(name, tmp_path):
    p = run_script(os.path.join(ROOT, f"{name}.py"), "--help", cwd=tmp_path)
    source = open(os.path.join(ROOT, f"{name}.py")).read()
    assert source.split('"""')[1].strip().splitlines()[0] in p.stdout  # what the script is for, first
    keys = config_keys(name)
    assert re.findall(r"^  --(\w+)=", p.stdout, flags=re.M) == keys and len(keys) >= 2  # all, and nothing else
    assert os.listdir(tmp_path) == [], "--help wrote files"
