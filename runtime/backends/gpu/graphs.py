"""Which ONNX file is which engine role: forward (z → image), vjp ((z, g_image) → g_z), loss ((z, x) → loss, g_z).

The names are the exporter's: ``genorigin.export.package.GRAPH_FILES`` (a package's files) and
``genorigin.export.onnx_autodiff.AUTODIFF_KEY`` (the metadata an autodiff graph records its kind under); this
module only maps them to engine roles and accepts a few plain-folder aliases. The export modules import
torch and onnx, so they are imported when a graph is actually resolved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from genorigin.runtime.backends.gpu.engine_io import ROLES

GraphSource = str | Path | Sequence[str | Path] | Mapping[str, str | Path]

ROLE_OF_PACKAGE_GRAPH = {"forward": "forward", "vjp": "vjp", "loss_mse": "loss"}  # GRAPH_FILES key → role
FOLDER_ALIASES: dict[str, tuple[str, ...]] = {  # other file names a plain export folder may use
    "forward": ("model.onnx", "generator.onnx"),
    "loss": ("loss.onnx", "loss-mse.onnx"),
}


def folder_names() -> dict[str, tuple[str, ...]]:
    """Role → file names looked for in a plain folder: the package's own name first, then the aliases."""
    from genorigin.export.package import GRAPH_FILES

    names = {role: (GRAPH_FILES[key],) for key, role in ROLE_OF_PACKAGE_GRAPH.items()}
    return {role: names[role] + FOLDER_ALIASES.get(role, ()) for role in names}


def graph_kind(path: str | Path) -> str:
    """The autodiff kind an ONNX file records ('vjp', 'loss-mse', 'loss-l1'), or 'forward' for a plain export."""
    import onnx
    from genorigin.export.onnx_autodiff import AUTODIFF_KEY

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    fields = dict(item.split("=", 1) for item in meta.get(AUTODIFF_KEY, "").split(",") if "=" in item)
    return fields.get("kind") or "forward"


def graph_role(path: str | Path) -> str:
    """'vjp' or 'loss' from the autodiff metadata of an ONNX file; 'forward' for a plain export."""
    kind = graph_kind(path)
    if kind == "vjp":
        return "vjp"
    return "loss" if kind.startswith("loss") else "forward"


def external_data_files(path: str | Path) -> list[Path]:
    """External weight files an ONNX file references (their bytes are part of the graph's identity)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    names: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / n for n in sorted(names)]


def package_graphs(folder: str | Path) -> dict[str, Path]:
    """{role: path} of an attribution package (``genorigin export``), after its manifest hashes verify."""
    from genorigin.export.package import AttributionPackage

    package = AttributionPackage.load(folder)  # raises PackageError on a tampered or incomplete package
    graphs = package.manifest["graphs"]
    return {role: package.graph_path(key) for key, role in ROLE_OF_PACKAGE_GRAPH.items() if key in graphs}


def _from_files(paths: Sequence[str | Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {p}")
        role = graph_role(p)
        if role in found:
            raise ValueError(f"two {role} graphs given: {found[role]} and {p}")
        found[role] = p
    return found


def resolve_graphs(source: GraphSource, roles: Sequence[str] | None = None) -> dict[str, Path]:
    """{role: onnx path} from a package or export folder, a list of ONNX files or an explicit mapping."""
    if isinstance(source, Mapping):
        found = {str(r): Path(p) for r, p in source.items()}
    elif isinstance(source, (str, Path)) and (Path(source) / "manifest.json").is_file():
        found = package_graphs(source)
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        hits = {role: next((Path(source) / n for n in ns if (Path(source) / n).is_file()), None)
                for role, ns in folder_names().items()}  # fmt: skip
        found = {role: p for role, p in hits.items() if p is not None}
    else:
        found = _from_files([source] if isinstance(source, (str, Path)) else list(source))
    unknown = set(found) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown graph roles {sorted(unknown)}; expected {ROLES}")
    if roles is not None:
        missing = [r for r in roles if r not in found]
        if missing:
            raise ValueError(f"no ONNX graph for role(s) {missing} in {source}")
        found = {r: found[r] for r in roles}
    if not found:
        expected = ", ".join(sum(folder_names().values(), ()))
        raise ValueError(f"no ONNX graphs found in {source} (expected {expected})")
    for p in found.values():
        if not p.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {p}")
    return found


def usable_role_sets(roles: Sequence[str]) -> list[tuple[str, ...]]:
    """Which step plans the given graphs allow: ('loss',) and/or ('forward', 'vjp')."""
    plans = []
    if "loss" in roles:
        plans.append(("loss",))
    if "forward" in roles and "vjp" in roles:
        plans.append(("forward", "vjp"))
    return plans
