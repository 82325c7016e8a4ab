"""Finding a model class: by a built-in name, by an installed package's entry point, or by a reference.

A model is named by
* a built-in name: ``fa``, ``vae``, ``cvae``, ``gmvae``, ``vrnn``;
* the name of an entry point in the group ``aevb.models`` of any installed package (how pytest finds
  plugins): in its ``pyproject.toml``, ``[project.entry-points."aevb.models"] mymodel = "mypkg.models:MyModel"``;
* a reference ``package.module:Class`` (importable) or ``path/to/file.py:Class`` (a file anywhere).

``reference(cls)`` is the inverse: the string a run directory records, so that ``aevb eval`` and ``aevb sample``
rebuild the model later, from any working directory. Modules are imported only when a model is asked for.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import sysconfig
from dataclasses import is_dataclass
from pathlib import Path

from aevb.errors import UsageError

BUILTIN = {
    "fa": "aevb.models.fa:FactorAnalysis",
    "vae": "aevb.models.vae:VAE",
    "cvae": "aevb.models.cvae:CVAE",
    "gmvae": "aevb.models.gmvae:GMVAE",
    "vrnn": "aevb.models.vrnn:VRNN",
}
ENTRY_POINT_GROUP = "aevb.models"
FILE_MODULE_PREFIX = "aevb_user_model_"  # modules loaded from a file path are registered under this prefix


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed packages' models: name -> entry point (not loaded)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every model name ``resolve`` knows without a reference: the built-in ones, then installed ones."""
    return [*BUILTIN, *(n for n in entry_points() if n not in BUILTIN)]


def resolve(ref: str) -> type:
    """The model class named by ``ref`` (see the module docstring); UsageError, one line, if there is none."""
    if ref in BUILTIN:
        ref = BUILTIN[ref]
    elif ":" not in ref:
        installed = entry_points()
        if ref not in installed:
            raise UsageError(f"unknown model {ref!r}: use one of {', '.join(names())}, or a reference "
                             "package.module:Class or path/to/file.py:Class")
        try:
            cls = installed[ref].load()
        except Exception as e:  # an installed plugin that fails to import: its error, on one line
            raise UsageError(f"model {ref!r} (entry point {installed[ref].value}) cannot be imported: "
                             f"{type(e).__name__}: {first_line(e)}") from None
        return checked(cls, ref)
    location, _, qualname = ref.rpartition(":")
    if not location or not qualname:
        raise UsageError(f"bad model reference {ref!r}: use package.module:Class or path/to/file.py:Class")
    module = import_file(location, ref) if location.endswith(".py") else import_module(location, ref)
    cls = module
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise UsageError(f"model reference {ref!r}: {location} has no {qualname}")
    return checked(cls, ref)


def checked(cls, ref: str) -> type:
    """``cls`` if it is a model class that can be built: a subclass of ``LatentVariableModel`` with a dataclass
    ``Config`` and every abstract method defined; else UsageError, one line."""
    from aevb.model import LatentVariableModel  # torch, imported only once a model is asked for

    if not (isinstance(cls, type) and issubclass(cls, LatentVariableModel)):
        raise UsageError(f"model reference {ref!r} is not a subclass of aevb.model.LatentVariableModel")
    if not is_dataclass(getattr(cls, "Config", None)):
        raise UsageError(f"model {ref!r}: {cls.__qualname__} declares no Config, the dataclass of its hyperparameters "
                         "(see docs/models.md)")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise UsageError(f"model {ref!r}: {cls.__qualname__} does not define {missing}, which every model must "
                         "(see docs/models.md)")
    return cls


def import_module(name: str, ref: str):
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise UsageError(f"model reference {ref!r}: cannot import {name} ({type(e).__name__}: {first_line(e)})") from None


def import_file(path: str, ref: str):
    """The module of a .py file, loaded once per absolute path (its name derived from the path). As for a script
    that Python runs, the file's folder goes first on ``sys.path``, so the file imports the modules beside it."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise UsageError(f"model reference {ref!r}: {path}: no such file")
    name = FILE_MODULE_PREFIX + "".join(c if c.isalnum() else "_" for c in str(file))
    if name in sys.modules:
        return sys.modules[name]
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing it: dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise UsageError(f"model reference {ref!r}: {path} fails to import ({type(e).__name__}: {first_line(e)})") from None
    return module


def reference(cls: type) -> str:
    """The string that ``resolve`` turns back into ``cls``: its built-in or installed name, else a reference:
    ``package.module:Class`` for a module of a package or of an installed location (site-packages, the standard
    library), and ``/absolute/path/file.py:Class`` for a script (``__main__``), a file loaded by path, or a lone
    module found beside the script or in the working directory (``from my_model import MyModel``), which another
    process, from another folder, could not import by its name."""
    for names_to_refs in (BUILTIN, {n: ep.value for n, ep in entry_points().items()}):
        for name, ref in names_to_refs.items():
            if ref.replace(" ", "") == f"{cls.__module__}:{cls.__qualname__}":
                return name
    module = sys.modules.get(cls.__module__)
    lone = ("." not in cls.__module__ and not hasattr(module, "__path__")
            and not installed(getattr(module, "__file__", None)))
    if cls.__module__.startswith(FILE_MODULE_PREFIX) or cls.__module__ == "__main__" or lone:
        file = getattr(module, "__file__", None)
        if file is None:
            raise UsageError(f"{cls.__qualname__} is defined in an interactive session: put it in a file or module "
                             "so that a run can rebuild it")
        return f"{Path(file).resolve()}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def installed(file: str | None) -> bool:
    """Whether ``file`` (None: a built-in module) lies where any Python process finds modules by name."""
    if file is None:
        return True
    roots = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(Path(file).resolve().is_relative_to(root) for root in roots)


def first_line(error: BaseException) -> str:
    """The error's message on one line: its first line, and the next when the first only announces it ('...:')."""
    lines = [line.strip() for line in str(error).strip().splitlines()] or [""]
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
