"""The house rules of ambient_jax, checked on its source (no JAX): every public function is
annotated (launch/test.sh type-checks the annotated code with mypy), no module is over 450 lines
(the benchmarks' scripts neither), no evaluation module imports the trainer, the imports have no
cycle (typing-only imports included), no module takes another's private name, and the package
root holds only what several parts use (a folder per part: data, diffusion, eval, nets,
programs, theory, training)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ambient_jax")
# Root modules used by one part only, and why they stay at the root.
ROOT_BY_DESIGN = {"xla_cpu": "the CPU flags a script of the user's own sets (docs/library.md)"}


def modules():
    for folder, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), open(path).read()


def public_functions(tree):
    """(qualified name, node) of the module's public functions and public classes' methods."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (
                    not item.name.startswith("_") or item.name == "__call__"
                ):
                    yield f"{node.name}.{item.name}", item


def test_every_public_function_is_annotated():
    missing = []
    for path, source in modules():
        for name, node in public_functions(ast.parse(source)):
            a = node.args
            params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self",)]
            params += [p for p in (a.vararg, a.kwarg) if p is not None]
            if node.returns is None or any(p.annotation is None for p in params):
                missing.append(f"{path}:{node.lineno} {name}")
    assert not missing, "\n".join(missing)


def test_no_module_is_over_450_lines():
    long = {path: source.count("\n") for path, source in modules() if source.count("\n") > 450}
    assert not long, long


def imports_anywhere(source):
    """Every ambient_jax module a source imports, at any depth (functions too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.split(".")[0] == "ambient_jax"}


def test_evaluation_never_imports_the_trainer():
    for path, source in modules():
        if path.startswith(os.path.join("ambient_jax", "eval")):
            trainer = {m for m in imports_anywhere(source) if m.startswith("ambient_jax.training")}
            assert not trainer, (path, trainer)


def single_part_root_modules(files):
    """The package-root modules of these {path: source} files that only one part (a folder of
    the package) imports: they belong in that part's folder."""
    users = {}
    for path, source in files.items():
        parts = path.split(os.sep)
        part = parts[1] if len(parts) > 2 else "root"
        for module in imports_anywhere(source):
            users.setdefault(module, set()).add(part)
    root = [p.split(os.sep)[1][: -len(".py")] for p in files if p.count(os.sep) == 1]
    return sorted(
        name
        for name in root
        if name != "__init__" and len(users.get(f"ambient_jax.{name}", set()) - {"root"}) < 2
    )


def test_the_package_root_holds_only_what_several_parts_use():
    assert set(single_part_root_modules(dict(modules()))) == set(ROOT_BY_DESIGN)


def module_imports(path, source):
    """The package modules `path` imports at module level (not inside functions), typing-only
    imports (`if TYPE_CHECKING:`) included: they are edges of the design as much as any."""
    name = path[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__")
    found = set()
    body = list(ast.parse(source).body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If):  # an import under any module-level `if` is still an edge
            body[:0] = node.body + node.orelse
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ambient_jax":
                found |= {f"ambient_jax.{alias.name}" for alias in node.names}
            elif node.module.startswith("ambient_jax."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ambient_jax.")}
    return name, found


def import_cycle(files):
    """The first import cycle among these {path: source} modules, as a list of names, or None."""
    graph = dict(module_imports(path, source) for path, source in files.items())
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return None
        if state.get(module) == "open":
            return trail + [module]
        state[module] = "open"
        for dep in sorted(graph[module]):
            cycle = visit(dep, trail + [module])
            if cycle:
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def private_imports(files, siblings=()):
    """`path:line module._name` for each private name one module takes from another: imported
    (`from m import _x`) or read as an attribute of an imported project module (`m._x`).
    siblings: bare module names that count as project modules (scripts importing each other)."""
    found = []
    for path, source in files.items():
        modules = set()  # local names bound to project modules
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                ours = node.module.split(".")[0] in ("ambient_jax", *siblings)
                for alias in node.names if ours else ():
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path}:{node.lineno} {node.module}.{alias.name}")
                    elif node.module == "ambient_jax" or node.module.startswith("ambient_jax."):
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in ("ambient_jax", *siblings):
                        modules.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def long_files(files, limit=450):
    return {
        path: source.count("\n") for path, source in files.items() if source.count("\n") > limit
    }


def benchmark_scripts():
    folder = os.path.join(ROOT, "benchmarks")
    return {
        os.path.join("benchmarks", name): open(os.path.join(folder, name)).read()
        for name in sorted(os.listdir(folder))
        if name.endswith(".py")
    }


def test_the_module_imports_have_no_cycle_typing_imports_included():
    assert import_cycle(dict(modules())) is None


def test_no_module_takes_a_private_name_from_another():
    siblings = [name[: -len(".py")] for name in os.listdir(os.path.join(ROOT, "benchmarks"))]
    found = private_imports(dict(modules())) + private_imports(benchmark_scripts(), siblings)
    assert not found, "\n".join(found)


def test_no_benchmark_script_is_over_450_lines():
    assert not long_files(benchmark_scripts())


def test_benchmark_scripts_edit_no_import_path_and_share_no_name_with_the_library():
    """benchmarks/ imports the package as installed, and a bare `import NAME` there never means a
    library module of the same name."""
    library = {os.path.basename(path)[: -len(".py")] for path, _ in modules()} - {"__init__"}
    for path, source in benchmark_scripts().items():
        assert "sys.path" not in source, path
        assert os.path.basename(path)[: -len(".py")] not in library, path


def test_each_house_rule_fails_on_a_house_that_breaks_it():
    """The checkers above, run on small sources that break each rule once: a cycle closed only by
    a typing import, a private name imported and one read as an attribute, a long file."""
    cyclic = {
        "ambient_jax/a.py": "from ambient_jax import b\n",
        "ambient_jax/b.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ambient_jax import a\n"
        ),
    }
    assert import_cycle(cyclic) == ["ambient_jax.a", "ambient_jax.b", "ambient_jax.a"]
    assert (
        import_cycle({"ambient_jax/a.py": "from ambient_jax import b\n", "ambient_jax/b.py": ""})
        is None
    )
    private = {
        "ambient_jax/c.py": "from ambient_jax.diffusion.schedules import _expand\n",
        "ambient_jax/d.py": "from ambient_jax import losses\nx = losses._two_regime_ve\n",
        "ambient_jax/e.py": "import numpy as np\nx = np._core\n",  # not ours: allowed
        "benchmarks/f.py": "import common\nx = common._helper\n",
    }
    assert private_imports(private, siblings=("common",)) == [
        "ambient_jax/c.py:1 ambient_jax.diffusion.schedules._expand",
        "ambient_jax/d.py:2 losses._two_regime_ve",
        "benchmarks/f.py:2 common._helper",
    ]
    assert long_files({"x.py": "\n" * 451, "y.py": "\n" * 450}) == {"x.py": 451}
    one_part = {
        os.path.join("ambient_jax", "shared.py"): "",
        os.path.join("ambient_jax", "lonely.py"): "",
        os.path.join("ambient_jax", "eval", "a.py"): "from ambient_jax import lonely, shared\n",
        os.path.join("ambient_jax", "nets", "b.py"): "from ambient_jax.shared import x\n",
    }
    assert single_part_root_modules(one_part) == ["lonely"]
