"""``prefab-manifest.json`` models, exactly as prefab authors already write them.

Unknown fields are kept (``extra="allow"``) so a manifest written for another platform
version still loads; the fields the factory acts on are typed.
"""

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory.errors import ManifestError

MANIFEST_NAME = "prefab-manifest.json"
SOURCE_PATH = Path("src") / "main.py"

ParamType = Literal["string", "number", "integer", "boolean", "object", "array", "InputFile", "OutputFile"]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"^[A-Z0-9_]+$")
_PREFAB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Schema(_Open):
    """A JSON-Schema-like type description (``items`` of arrays, ``properties`` of objects)."""

    type: ParamType | None = None
    description: str = ""
    enum: list[Any] | None = None
    items: "Schema | None" = None
    properties: "dict[str, Schema] | None" = None
    required: list[str] | bool | None = None


class Parameter(_Open):
    """One declared parameter of a function."""

    name: str
    description: str = ""
    type: ParamType
    required: bool = False
    default: Any = None
    enum: list[Any] | None = None
    items: Schema | None = None
    properties: dict[str, Schema] | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value) or value.startswith("__"):
            raise ValueError(f"parameter name {value!r} is not a Python identifier")
        return value


class Secret(_Open):
    """A secret the function reads from its environment."""

    name: str
    description: str = ""
    instructions: str | None = None
    required: bool = True

    @field_validator("name")
    @classmethod
    def _upper(cls, value: str) -> str:
        if not _SECRET_NAME.match(value):
            raise ValueError(f"secret name {value!r} must match [A-Z0-9_]+")
        return value


class FileItems(_Open):
    type: Literal["InputFile", "OutputFile"]


class FileGroup(_Open):
    """A v3.0 file group: ``{"type": "array", "items": {"type": "InputFile"}, ...}``."""

    type: Literal["array"] = "array"
    items: FileItems
    min_items: int | None = Field(default=None, alias="minItems", ge=0)
    max_items: int | None = Field(default=None, alias="maxItems", ge=0)
    description: str = ""

    @property
    def is_input(self) -> bool:
        return self.items.type == "InputFile"


class Returns(_Open):
    type: str | None = None
    description: str = ""


class FunctionSpec(_Open):
    """One function a prefab serves."""

    name: str
    description: str = ""
    streaming: bool = False
    parameters: list[Parameter] = Field(default_factory=list)
    returns: Returns | None = None
    secrets: list[Secret] = Field(default_factory=list)
    files: dict[str, FileGroup] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="seconds; else the factory default")
    retries: int = Field(default=0, ge=0, le=10)

    @field_validator("name")
    @classmethod
    def _public_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value) or value.startswith("_"):
            raise ValueError(f"function name {value!r} must be a public Python identifier")
        return value

    def input_groups(self) -> dict[str, FileGroup]:
        """The file groups a caller fills."""
        return {name: group for name, group in self.files.items() if group.is_input}


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?\s*$")
_MEMORY_UNITS = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def memory_bytes(value: str | int | None) -> int:
    """A Kubernetes-style quantity (``256Mi``, ``1G``, ``1048576``) in bytes; 0 for none."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    match = _MEMORY.match(value)
    if match is None:
        raise ValueError(f"memory {value!r} is not a quantity like 256Mi, 1Gi or 512M")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


class ExecutionEnvironment(_Open):
    """Resources of the prefab's process: ``memory`` is enforced, ``cpu`` is recorded (docs/deployments.md)."""

    cpu: str | int | float | None = None
    memory: str | int | None = None

    @field_validator("memory")
    @classmethod
    def _quantity(cls, value: str | int | None) -> str | int | None:
        memory_bytes(value)
        return value

    @property
    def memory_limit_bytes(self) -> int:
        return memory_bytes(self.memory)


class Manifest(_Open):
    """The whole ``prefab-manifest.json``."""

    id: str
    version: str
    name: str = ""
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    functions: list[FunctionSpec]
    execution_environment: ExecutionEnvironment | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not _PREFAB_ID.match(value):
            raise ValueError(f"prefab id {value!r} may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("functions")
    @classmethod
    def _unique_names(cls, value: list[FunctionSpec]) -> list[FunctionSpec]:
        names = [f.name for f in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"functions declared twice: {', '.join(duplicates)}")
        return value

    def function(self, name: str) -> FunctionSpec | None:
        return next((f for f in self.functions if f.name == name), None)


def load_manifest(prefab_dir: Path) -> Manifest:
    """Parse and validate one prefab's manifest, raising :class:`ManifestError` with the reason."""
    path = prefab_dir / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: file not found") from exc
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors())
        raise ManifestError(f"{path}: {reasons}") from exc


def find_prefab_dirs(roots: list[Path]) -> list[Path]:
    """Each root is a prefab folder or a folder of prefab folders; return the prefab folders."""
    found: list[Path] = []
    for root in roots:
        if (root / MANIFEST_NAME).is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file()))
    return found
