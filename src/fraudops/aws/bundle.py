"""The Lambda deployment package: :mod:`fraudops.aws.lambdas` and the fraudops modules it imports.

The modules are found by reading imports (nothing is imported to find them), copied byte for byte from the
installed package, with every package ``__init__`` on the way and the package's metadata (``fraudops``
reads its version from it). They must need nothing beyond the standard library and boto3: a module that
imports anything else is refused, so the bundle cannot silently grow fraudops' data-science dependencies.
The zip is deterministic (sorted names, fixed times), and named by its content hash so that CloudFormation
updates the functions exactly when their code changes.
"""

from __future__ import annotations

import ast
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import fraudops
from fraudops.errors import FraudopsError

HANDLER_MODULE = "fraudops.aws.lambdas"
ALLOWED = frozenset({"boto3", "botocore"})
"""Third-party modules the Lambda Python runtime provides."""
PACKAGE = Path(fraudops.__file__).parent


def module_file(name: str) -> Path:
    """The source of a fraudops module (a package's ``__init__.py``)."""
    rel = Path(*name.split(".")[1:])
    package = PACKAGE / rel / "__init__.py"
    return package if package.is_file() else PACKAGE / rel.with_suffix(".py")


def _imports(name: str) -> set[str]:
    """Top-level names of every module ``name`` imports; fraudops modules by their full name."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            if base.split(".")[0] == "fraudops":
                found |= {f"{base}.{a.name}" for a in node.names if _exists(f"{base}.{a.name}")}
    return found


def _exists(name: str) -> bool:
    return name.split(".")[0] == "fraudops" and module_file(name).is_file()


def closure(root: str = HANDLER_MODULE) -> list[str]:
    """The fraudops modules ``root`` needs, with the packages that contain them, sorted."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for imported in _imports(name):
            top = imported.split(".")[0]
            if top == "fraudops":
                if _exists(imported):
                    todo.append(imported)
            elif top not in sys.stdlib_module_names and top not in ALLOWED and top != "__future__":
                raise FraudopsError(
                    f"{name} imports {imported}: the Lambda bundle allows the standard library and boto3"
                )
    return sorted(seen)


def _metadata() -> bytes:
    return (
        f"Metadata-Version: 2.1\nName: fraudops\nVersion: {fraudops.__version__}\n"
        "Summary: fraudops' AWS Lambda handlers\n"
    ).encode()


def lambda_zip() -> tuple[str, bytes]:
    """(file name, bytes) of the deployment package."""
    files = {
        module_file(m).relative_to(PACKAGE.parent).as_posix(): module_file(m).read_bytes() for m in closure()
    }
    files[f"fraudops-{fraudops.__version__}.dist-info/METADATA"] = _metadata()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[name])
    data = buf.getvalue()
    return f"fraudops-lambda-{hashlib.sha256(data).hexdigest()[:12]}.zip", data
