"""The house rules of ambient_jax, checked on its source (no JAX): every public function is
annotated (launch/test.sh type-checks the annotated code with mypy), no module is over 450 lines,
no evaluation module imports the trainer, and the module-level imports have no cycle."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ambient_jax")
TRAINER = {"train", "train_step", "train_state", "compiled_step", "training_data", "run_dir"}


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


def test_evaluation_never_imports_the_trainer():
    for path, source in modules():
        if not path.startswith(os.path.join("ambient_jax", "eval")):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module == "ambient_jax":
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module.removeprefix("ambient_jax.")}
            elif isinstance(node, ast.Import):
                names = {alias.name.removeprefix("ambient_jax.") for alias in node.names}
            else:
                continue
            assert not names & TRAINER, (path, node.lineno, names & TRAINER)


def module_imports(path, source):
    """The package modules `path` imports at module level (not inside functions)."""
    name = path[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__")
    found = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.If):  # typing-only imports (if TYPE_CHECKING) run no code
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ambient_jax":
                found |= {f"ambient_jax.{alias.name}" for alias in node.names}
            elif node.module.startswith("ambient_jax."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ambient_jax.")}
    return name, found


def test_the_module_imports_have_no_cycle():
    graph = dict(module_imports(path, source) for path, source in modules())
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", " -> ".join(trail + [module])
        state[module] = "open"
        for dep in sorted(graph[module]):
            visit(dep, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
