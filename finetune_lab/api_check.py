"""The course library's documented API, and the calls an answer makes into it that the API does not define.

modules/05 explains the rule: a module attribute, class member or keyword argument of gardenkit that its stub
data/gardenkit_api.pyi does not define is a hallucinated call. Types are followed through assignments, loops and
comprehensions, and variables named after a class are taken to be one.
"""

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_API = Path(__file__).resolve().parents[1] / "data" / "gardenkit_api.pyi"
FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)


# ---------------------------------------------------------------- the documented API


@dataclass
class ApiReference:
    module: str
    functions: dict[str, str | None] = field(default_factory=dict)  # name -> return annotation
    classes: dict[str, dict[str, str | None]] = field(default_factory=dict)  # class -> member -> return type
    params: dict[str, set[str]] = field(default_factory=dict)  # "name" or "Class.method" -> keyword names

    def module_names(self) -> set[str]:
        return set(self.functions) | set(self.classes)

    def returns(self, owner: str | None, name: str) -> str | None:
        table = self.functions if owner is None else self.classes.get(owner, {})
        return table.get(name)


def _annotation(node) -> str | None:
    return ast.unparse(node) if node is not None else None


def _keywords(func: ast.FunctionDef) -> set[str]:
    names = [a.arg for a in func.args.posonlyargs + func.args.args + func.args.kwonlyargs]
    return {n for n in names if n != "self"}


def load_api(path: str | Path = DEFAULT_API) -> ApiReference:
    """Parse a .pyi stub: module functions, classes, their methods and attributes, with return types."""
    path = Path(path)
    if not path.is_file():
        from .config import ConfigError

        raise ConfigError(f"the API stub {path} does not exist; pass the course library's .pyi (--api {DEFAULT_API})")
    api = ApiReference(module=path.stem.removesuffix("_api"))
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            api.functions[node.name] = _annotation(node.returns)
            api.params[node.name] = _keywords(node)
        elif isinstance(node, ast.ClassDef):
            members: dict[str, str | None] = {}
            api.params[node.name] = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    api.params[node.name] = _keywords(item)
                elif isinstance(item, ast.FunctionDef):
                    members[item.name] = _annotation(item.returns)
                    api.params[f"{node.name}.{item.name}"] = _keywords(item)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members[item.target.id] = _annotation(item.annotation)
            api.classes[node.name] = members
    return api


# ---------------------------------------------------------------- finding hallucinated calls


def extract_code(answer: str) -> str:
    """The code of an answer: the first fenced block if there is one, else the whole answer."""
    match = FENCE.search(answer)
    return (match.group(1) if match else answer).strip()


def _element_type(annotation: str | None) -> str | None:
    match = re.fullmatch(r"list\[(\w+)\]", annotation or "")
    return match.group(1) if match else None


class _ApiChecker(ast.NodeVisitor):
    """Walks an answer, tracking which names hold the module or an instance of one of its classes."""

    def __init__(self, api: ApiReference):
        self.api = api
        self.modules: set[str] = set()
        self.aliases: dict[str, str] = {}  # local name -> module-level API name
        # Prompts name their variables after the class (`garden`, `plant`, `task`, `sensor`).
        self.types: dict[str, str] = {c.lower(): c for c in api.classes}
        self.unknown: dict[str, None] = {}  # the names found, in order, each once

    def type_of(self, node) -> str | None:
        """The API type an expression evaluates to, where it can be told."""
        if isinstance(node, ast.Name):
            return self.types.get(node.id)
        if isinstance(node, ast.Subscript):
            return _element_type(self.type_of(node.value))
        callee = self._callee(node.func) if isinstance(node, ast.Call) else None
        if callee is None or callee in self.api.classes:  # not the API's, or a constructor
            return callee
        owner, _, name = callee.rpartition(".")
        return self.api.returns(owner or None, name)

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name == self.api.module:
                self.modules.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node):
        if node.module != self.api.module:
            return
        for alias in node.names:
            if alias.name not in self.api.module_names():
                self.unknown[f"{self.api.module}.{alias.name}"] = None
            self.aliases[alias.asname or alias.name] = alias.name

    def visit_Assign(self, node):
        self.visit(node.value)
        kind = self.type_of(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name) and kind:
                self.types[target.id] = kind
            self.visit(target)

    def _bind_loop_variable(self, target, iterable):
        """`for p in garden.plants()` makes `p` a Plant."""
        self.visit(iterable)
        element = _element_type(self.type_of(iterable))
        if element and isinstance(target, ast.Name):
            self.types[target.id] = element

    def visit_For(self, node):
        self._bind_loop_variable(node.target, node.iter)
        for child in node.body + node.orelse:
            self.visit(child)

    def visit_comprehension(self, node):
        self._bind_loop_variable(node.target, node.iter)
        for cond in node.ifs:
            self.visit(cond)

    def visit_ListComp(self, node):
        for gen in node.generators:  # first: they bind the names the element uses
            self.visit(gen)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp

    def _callee(self, func) -> str | None:
        """'load_garden', 'Garden' or 'Garden.water': the API callable a call expression names, if known."""
        if isinstance(func, ast.Name) and func.id in self.aliases:
            return self.aliases[func.id]
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id in self.modules:
                return func.attr
            owner = self.type_of(func.value)
            if owner in self.api.classes:
                return f"{owner}.{func.attr}"
        return None

    def visit_Call(self, node):
        callee = self._callee(node.func)
        known = self.api.params.get(callee) if callee else None
        if known is not None:
            for keyword in node.keywords:
                if keyword.arg is not None and keyword.arg not in known:
                    self.unknown[f"{callee}({keyword.arg}=)"] = None
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id in self.modules:
            if node.attr not in self.api.module_names():
                self.unknown[f"{self.api.module}.{node.attr}"] = None
        else:
            owner = self.type_of(node.value)
            if owner in self.api.classes and node.attr not in self.api.classes[owner]:
                self.unknown[f"{owner}.{node.attr}"] = None
        self.generic_visit(node)


def hallucinated_calls(code: str, api: ApiReference) -> list[str]:
    """The library names a piece of code uses that the API does not define (e.g. ['Garden.add_plant'])."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        # Unparsable code can still name module functions that do not exist.
        names = re.findall(rf"\b{re.escape(api.module)}\.(\w+)", code)
        return sorted({f"{api.module}.{n}" for n in names if n not in api.module_names()})
    checker = _ApiChecker(api)
    checker.visit(tree)
    return list(checker.unknown)
