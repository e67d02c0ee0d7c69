"""Architecture: modules import only downward, and each third-party library stays in its module."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "queuectl")

# lower may not import higher; modules on one level do not import each other
LAYERS = [
    ["errors", "faults", "version"], ["timeutil"], ["job"], ["names"], ["fsutil", "fsinfo"], ["locks"],
    ["pool", "journal", "queues", "slots", "turns", "logs"], ["paths"], ["config"], ["registry"], ["waiting"],
    ["inventory"], ["moves"],
    ["dependencies", "schedules"], ["spool"], ["ingest", "metrics"],
    ["fsck", "doctor"], ["runner", "pending", "retries", "contact", "folderstamp", "pausing"], ["hooks", "waker", "admission"],
    ["housekeeping", "execution"], ["worker"],
    ["supervisor"], ["render"],
    ["dashboard"], ["cli"],
]
LEVEL = {mod: i for i, layer in enumerate(LAYERS) for mod in layer}
ENTRY_POINTS = {"__init__", "__main__"}  # the package facade and `python -m`, above everything

THIRD_PARTY_HOME = {"click": {"cli"}, "watchdog": {"waker"}, "portalocker": {"locks"},
                    "filelock": {"locks"}, "croniter": {"schedules"}}


def modules():
    """The package's modules; a subpackage (cli/) counts as one module of its own level."""
    return sorted(n[:-3] if n.endswith(".py") else n for n in os.listdir(PACKAGE)
                  if n.endswith(".py") or os.path.isfile(os.path.join(PACKAGE, n, "__init__.py")))


def sources(module):
    """The files of `module`: one, or every file of a subpackage."""
    path = os.path.join(PACKAGE, module)
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".py"))
    return [path + ".py"]


def trees(module):
    for path in sources(module):
        with open(path, encoding="utf-8") as fh:
            yield ast.parse(fh.read(), filename=path)


def imports_of(module):
    """(internal modules, top-level external packages) imported anywhere in `module`,
    including imports inside functions. Inside a subpackage, `from .x` names its own files
    and `from ..x` the package's modules."""
    internal, external = set(), set()
    depth = 2 if os.path.isdir(os.path.join(PACKAGE, module)) else 1
    for tree in trees(module):
        _collect(module, tree, depth, internal, external)
    return internal, external


def _collect(module, tree, depth, internal, external):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "queuectl":
                    if len(parts) > 1:
                        internal.add(parts[1])
                else:
                    external.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "queuectl":
                    if len(parts) > 1:
                        internal.add(parts[1])
                    else:
                        internal.update(a.name for a in node.names)
                else:
                    external.add(parts[0])
            elif node.level < depth:
                continue  # a file of the same subpackage
            elif node.level == depth:
                if node.module:
                    internal.add(node.module.split(".")[0])
                else:  # from . import a, b
                    internal.update(a.name for a in node.names)
            else:
                raise AssertionError(f"{module}: relative import beyond the package")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" or \
                isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            raise AssertionError(f"{module}: dynamic import hides the layering")


def test_every_module_has_a_place_in_the_layers():
    mods = set(modules())
    assert mods - ENTRY_POINTS == set(LEVEL), (
        f"not in LAYERS: {sorted(mods - ENTRY_POINTS - set(LEVEL))}; "
        f"in LAYERS but gone: {sorted(set(LEVEL) - mods)}")


@pytest.mark.parametrize("module", sorted(LEVEL))
def test_imports_only_point_down(module):
    internal, _ = imports_of(module)
    internal.discard(module)
    unknown = internal - set(LEVEL)
    assert not unknown, f"{module} imports {sorted(unknown)}, which is not a layered module"
    upward = sorted(m for m in internal if LEVEL[m] >= LEVEL[module])
    assert not upward, f"{module} (level {LEVEL[module]}) imports {upward} (same level or higher)"


@pytest.mark.parametrize("library, homes", sorted(THIRD_PARTY_HOME.items()))
def test_third_party_library_stays_in_its_module(library, homes):
    users = {m for m in modules() if library in imports_of(m)[1]}
    assert users <= homes, f"{library} imported in {sorted(users - homes)}; only in {sorted(homes)}"
    assert users, f"{library} is expected in {sorted(homes)}"


def test_the_layer_check_sees_function_level_imports():
    """Guard for the checker itself: spool imports registry inside a function."""
    internal, _ = imports_of("spool")
    assert {"registry", "config", "locks", "names", "timeutil", "errors", "job", "paths", "moves"} <= internal
    _, external = imports_of("locks")
    assert {"portalocker", "filelock"} <= external


@pytest.mark.parametrize("module", modules())
def test_no_private_member_of_another_object_is_used(module):
    """A module uses another module's or object's public names only (`x._y` only on self/cls),
    so that each module's surface is what it documents."""
    offenders = []
    for tree in trees(module):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls") or node.attr == "_exit":  # os._exit
                    continue
                offenders.append(f"line {node.lineno}: .{node.attr}")
    assert not offenders, f"{module} uses private members of other objects: {offenders}"
