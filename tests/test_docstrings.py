"""The public API documents itself: every public callable has a Google-style docstring (Args / Returns / Raises)
whose Args name exactly its parameters, type hints on every parameter and its return, and every docstring example
runs as a doctest. The API reference of the docs site is generated from these docstrings (mkdocs.yml)."""
import doctest
import importlib
import inspect
import re

import pytest
import torch

# The packages whose public names (their __all__) make the public API, and the peers' front ends.
PACKAGES = ["clnscl", "clnscl.metrics", "clnscl.theory", "clnscl.train"]
COMPAT = ["clnscl.compat.lightly", "clnscl.compat.supcon", "clnscl.compat.pml", "clnscl.compat.open_clip",
          "clnscl.compat.nscl_authors"]
NN_MODULE_HOOKS = {"extra_repr"}  # nn.Module's own hooks, overridden: documented by torch
SECTION = re.compile(r"^(Args|Returns|Yields|Raises|Example|Examples|Note|Attributes):\s*$", re.M)
ENTRY = re.compile(r"^(\*{0,2}\w+)(?: \([^)]*\))?:(?:\s|$)")


def _public_objects():
    seen = []
    for name in PACKAGES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if callable(obj) and obj not in [o for _, o in seen]:
                seen.append((f"{name}.{attr}", obj))
    for name in COMPAT:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == name and not attr.startswith("_"):
                seen.append((f"{name}.{attr}", obj))
    callables = []
    for qualname, obj in seen:
        callables.append((qualname, obj))
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in NN_MODULE_HOOKS:
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member):
                    callables.append((f"{qualname}.{attr}", member))
    return callables


PUBLIC = _public_objects()


def _sections(doc: str) -> dict[str, list[str]]:
    """The docstring's sections: name -> the entry lines (first-level indentation) of that section."""
    out, current = {}, None
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        m = SECTION.match(line)
        if m:
            current = m.group(1)
            out[current] = []
            continue
        if current and line.strip():
            indent = len(line) - len(line.lstrip())
            if indent == 0:
                current = None
            elif indent == 4:
                out[current].append(line.strip())
    return out


def _parameters(obj) -> list[inspect.Parameter]:
    if inspect.isclass(obj) and issubclass(obj, BaseException) and "__init__" not in vars(obj):
        return []  # an exception that keeps its base's constructor
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    return [p for p in params if p.name not in ("self", "cls")]


def _doc(obj) -> str:
    """The docstring the reference shows: a class's docstring merged with its __init__'s."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and "__init__" in vars(obj):
        doc += "\n" + (inspect.getdoc(obj.__init__) or "")
    return doc


def _returns_value(obj) -> bool:
    if inspect.isclass(obj):
        return False
    ret = inspect.signature(obj).return_annotation
    return ret not in (None, "None", inspect.Signature.empty)


def test_the_public_api_is_found():
    names = [n for n, _ in PUBLIC]
    assert "clnscl.contrastive_loss" in names and "clnscl.metrics.cka" in names
    assert "clnscl.train.Coupled.step" in names
    assert len(PUBLIC) > 60


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_callable_has_google_sections_naming_its_parameters(name, obj):
    doc = _doc(obj)
    assert doc.strip(), f"{name}: no docstring"
    sections = _sections(doc)
    params = _parameters(obj)
    for p in params:
        assert p.kind not in (p.VAR_KEYWORD,) or not inspect.isclass(obj), f"{name}: **{p.name} on a constructor"
    if params:
        assert "Args" in sections, f"{name}: no Args section"
        documented = [ENTRY.match(e).group(1).lstrip("*") for e in sections["Args"] if ENTRY.match(e)]
        assert documented == [p.name for p in params], f"{name}: Args lists {documented}, the signature has " \
                                                       f"{[p.name for p in params]}"
    if _returns_value(obj):
        assert "Returns" in sections or "Yields" in sections, f"{name}: no Returns section"
    if params and not (inspect.isclass(obj) and issubclass(obj, BaseException)):
        # what bad input raises: a method without arguments has no input to refuse, an exception is what is raised
        assert "Raises" in sections, f"{name}: no Raises section"


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_callable_has_type_hints(name, obj):
    missing = [p.name for p in _parameters(obj) if p.annotation is inspect.Parameter.empty]
    assert not missing, f"{name}: parameters without a type hint: {missing}"
    if not inspect.isclass(obj) and obj.__name__ != "__init__":
        assert inspect.signature(obj).return_annotation is not inspect.Signature.empty, f"{name}: no return hint"


def _examples():
    finder = doctest.DocTestFinder(recurse=False)
    tests = []
    for name, obj in PUBLIC:
        for t in finder.find(obj, name, globs={}):
            if t.examples:
                tests.append((name, t))
    return tests


EXAMPLES = _examples()


def test_the_docstrings_carry_examples():
    assert len(EXAMPLES) >= 10, [n for n, _ in EXAMPLES]


@pytest.mark.parametrize("name,test", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_every_docstring_example_runs(name, test):
    torch.manual_seed(0)
    test.globs = {"torch": torch, "clnscl": importlib.import_module("clnscl")}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} example lines failed"
